//! What the agent does as the guest's init: leave the initramfs for a tmpfs root (so that
//! containers can `pivot_root`), mount the API filesystems and cgroup2, prepare the
//! containers' cgroup parent, the pod's network namespace, entropy and hostname, and power
//! the VM off. Preparing the pod's cgroups and directories ([`prepare_pod`]) and its `/etc`
//! files ([`write_pod_etc`]) follow the pod's [`PodLayout`], so a host pod uses them too.
//!
//! This kernel has no ACPI: `reboot(RB_AUTOBOOT)` (with `reboot=k`, a reset through the
//! i8042) is how a guest ends its VM, and peapod's VMM ends with exit status 0 on it.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::MsFlags;

use super::layout::PodLayout;
use super::os::Os;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("init: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("init: {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("init: {0}")]
    Netns(#[from] crate::network::netns::NetnsError),
}

fn io_at(what: impl Into<String>) -> impl FnOnce(io::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Io { what, source }
}

fn sys_at(what: impl Into<String>) -> impl FnOnce(nix::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Sys { what, source }
}

/// The initramfs root is the kernel's `rootfs`, which `pivot_root` cannot leave, so
/// containers could only `chroot` (escapable). Make a tmpfs the root instead (`MS_MOVE` +
/// `chroot`, what `switch_root` does). The agent keeps running from its file in the
/// initramfs underneath, which stays reachable as `/proc/self/exe` for its helpers, so
/// nothing is copied or executed again.
pub fn switch_to_tmpfs_root() -> Result<(), InitError> {
    let new = Path::new("/newroot");
    fs::create_dir_all(new).map_err(io_at("mkdir /newroot"))?;
    nix::mount::mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys_at("mount a tmpfs on /newroot"))?;
    for dir in ["dev", "proc", "sys", "run", "tmp", "root"] {
        fs::create_dir_all(new.join(dir)).map_err(io_at(format!("mkdir /newroot/{dir}")))?;
    }
    nix::unistd::chdir(new).map_err(sys_at("chdir /newroot"))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys_at("move /newroot onto /"))?;
    nix::unistd::chroot(".").map_err(sys_at("chroot"))?;
    nix::unistd::chdir("/").map_err(sys_at("chdir /"))
}

/// Seconds since the guest booted (for the console's log lines); 0 when unknown.
pub fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Mounts what every Linux userland expects plus cgroup2 (at the layout's cgroup root), and
/// prepares the pod ([`prepare_pod`]). The guest's alone: a host has its mounts. Idempotent
/// enough for a restart: an already-mounted target fails with EBUSY, which is ignored.
pub fn mount_system(os: &dyn Os, layout: &PodLayout) -> io::Result<()> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let cgroup_root = layout.cgroup_root.as_path();
    let p = Path::new;
    let mounts: [(&str, &Path, &str, MsFlags, Option<&str>); 8] = [
        ("proc", p("/proc"), "proc", hardened, None),
        ("sysfs", p("/sys"), "sysfs", hardened, None),
        (
            "devtmpfs",
            p("/dev"),
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            p("/dev/pts"),
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        ("shm", p("/dev/shm"), "tmpfs", hardened, Some("mode=1777")),
        ("cgroup2", cgroup_root, "cgroup2", hardened, None),
        (
            "tmpfs",
            p("/run"),
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            p("/tmp"),
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        os.mkdir_all(target, 0o755)?;
        match os.mount(Some(Path::new(source)), target, Some(fstype), flags, data) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            other => other?,
        }
    }
    prepare_pod(os, layout)
}

/// Makes the pod's cgroup parent with the containers' controllers enabled at every level
/// from the cgroup root down (cgroup v2 hands a controller to a child only when its parent
/// has it in `cgroup.subtree_control`), and the pod's directories.
pub fn prepare_pod(os: &dyn Os, layout: &PodLayout) -> io::Result<()> {
    let controllers = layout.controllers.as_bytes();
    os.write_file(
        &layout.cgroup_root.join("cgroup.subtree_control"),
        controllers,
    )?;
    for level in layout.cgroup_levels() {
        os.mkdir_all(&level, 0o755)?;
        os.write_file(&level.join("cgroup.subtree_control"), controllers)?;
    }
    for dir in layout.pod_dirs() {
        os.mkdir_all(dir, 0o755)?;
    }
    Ok(())
}

/// Writes the pod's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` under the layout's
/// [`PodLayout::pod_etc`], and its sysctls where the layout lets the agent
/// ([`PodLayout::write_sysctls`]; elsewhere a spec with sysctls is refused before anything
/// is written). The hostname maps to the pod's address when it has one (as Kubernetes does),
/// to 127.0.1.1 otherwise.
pub fn write_pod_etc(
    os: &dyn Os,
    layout: &PodLayout,
    spec: &crate::protocol::SandboxSpec,
) -> io::Result<()> {
    if !layout.write_sysctls && !spec.sysctls.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this pod's sysctls would be the host's: a host pod cannot set sysctls",
        ));
    }
    let own = super::network::pod_address(spec.network.as_ref())
        .map_or("127.0.1.1".to_string(), |ip| ip.to_string());
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{}\n",
        spec.hostname
    );
    for entry in &spec.hosts {
        hosts.push_str(&format!("{}\t{}\n", entry.ip, entry.names.join(" ")));
    }
    let mut resolv = String::new();
    for server in &spec.dns_servers {
        resolv.push_str(&format!("nameserver {server}\n"));
    }
    if !spec.dns_search.is_empty() {
        resolv.push_str(&format!("search {}\n", spec.dns_search.join(" ")));
    }
    let etc = &layout.pod_etc;
    os.write_file(&etc.join("hosts"), hosts.as_bytes())?;
    os.write_file(&etc.join("resolv.conf"), resolv.as_bytes())?;
    os.write_file(
        &etc.join("hostname"),
        format!("{}\n", spec.hostname).as_bytes(),
    )?;
    if layout.write_sysctls {
        for (key, value) in &spec.sysctls {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            os.write_file(&path, value.as_bytes())?;
        }
    }
    Ok(())
}

/// Creates the pod's network namespace (loopback up) and bind-mounts it on `path`, so
/// that it outlives the thread that made it. Creating a network namespace is one of the
/// slower steps of a pod's start, so the agent starts this at boot, while the host is still
/// connecting, and `CreateSandbox` waits for it. The host makes its pods' namespaces with
/// the same code ([`crate::network::netns`]).
pub fn spawn_pod_netns(path: &Path) -> std::thread::JoinHandle<Result<(), InitError>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || -> Result<(), InitError> {
        File::create(&path).map_err(io_at(format!("create {}", path.display())))?;
        crate::network::netns::unshare_and_bind(&path)?;
        Ok(())
    })
}

/// Adds the host's random bytes to the guest's entropy pool and credits them
/// (`RNDADDENTROPY`); the virtio-rng device, when attached, keeps feeding it too. The agent
/// calls it through [`Os::seed_entropy`], and only where [`PodLayout::seed_entropy`] says.
pub fn seed_entropy(seed: &[u8]) -> Result<(), InitError> {
    if seed.is_empty() {
        return Ok(());
    }
    let file = File::options()
        .write(true)
        .open("/dev/urandom")
        .map_err(io_at("open /dev/urandom"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // _IOW('R', 0x03, int[2])
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: the kernel reads the header and then buf_size bytes, all inside `info`, which
    // outlives the call; the fd is /dev/urandom, opened above.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc < 0 {
        return Err(InitError::Sys {
            what: "RNDADDENTROPY".into(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// Tells the VMM that the guest's init runs: the byte [`BOOT_SIGNAL_VALUE`] written to
/// guest-physical [`BOOT_SIGNAL_ADDRESS`] through `/dev/mem` (the VMM's boot timer; see
/// `vmm::devices::boot_signal`). Only timing depends on it, so callers may ignore an error
/// (a kernel without `CONFIG_DEVMEM`).
///
/// [`BOOT_SIGNAL_VALUE`]: crate::vmm::devices::boot_signal::BOOT_SIGNAL_VALUE
/// [`BOOT_SIGNAL_ADDRESS`]: crate::vmm::layout::BOOT_SIGNAL_ADDRESS
pub fn send_boot_signal() -> Result<(), InitError> {
    use std::os::unix::fs::OpenOptionsExt;

    let address = crate::vmm::layout::BOOT_SIGNAL_ADDRESS;
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
        .map_err(io_at("opening /dev/mem"))?;
    let offset = libc::off_t::try_from(address).map_err(|_| InitError::Io {
        what: format!("the boot signal's address {address:#x}"),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    let page = 4096;
    // SAFETY: maps one page of /dev/mem, a new mapping that aliases nothing of ours; the
    // result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io_at("mapping the boot signal's page of /dev/mem")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `ptr` is the start of the page mapped writable above; a volatile byte store is
    // the MMIO write the VMM watches for. The page is unmapped right after, and only here.
    unsafe {
        std::ptr::write_volatile(
            ptr.cast::<u8>(),
            crate::vmm::devices::boot_signal::BOOT_SIGNAL_VALUE,
        );
        libc::munmap(ptr, page);
    }
    Ok(())
}

/// Syncs and reboots, which ends the VM with exit status 0.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reachable when not PID 1 with CAP_SYS_BOOT (a test run): end the process.
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::os::{Call, RecordingOs};
    use crate::protocol::{HostEntry, SandboxSpec};

    #[test]
    fn system_mounts_come_before_cgroup_setup() {
        let os = RecordingOs::new();
        mount_system(&os, &PodLayout::guest()).unwrap();
        let calls = os.calls();
        let targets: Vec<_> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target.display().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            targets,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/sys/fs/cgroup",
                "/run",
                "/tmp"
            ]
        );
        assert!(calls.contains(&Call::WriteFile(
            "/sys/fs/cgroup/peapod/cgroup.subtree_control".into(),
            "+cpu +memory +pids".into()
        )));
    }

    #[test]
    fn a_host_pod_gets_its_own_cgroup_with_controllers_at_every_level_and_no_mounts() {
        let id = crate::pod::PodId::parse(&"9".repeat(64)).unwrap();
        let host = PodLayout::host(&id, Path::new("/run/p"));
        let os = RecordingOs::new();
        prepare_pod(&os, &host).unwrap();
        let slice = Path::new("/sys/fs/cgroup/peapod.slice");
        let pod = slice.join(format!("pod-{id}"));
        let on = |p: &Path| {
            Call::WriteFile(
                p.join("cgroup.subtree_control"),
                "+cpu +memory +pids".into(),
            )
        };
        let run = Path::new("/run/p").join(id.as_str());
        assert_eq!(
            os.calls(),
            [
                on(Path::new("/sys/fs/cgroup")),
                Call::MkdirAll(slice.into(), 0o755),
                on(slice),
                Call::MkdirAll(pod.clone(), 0o755),
                on(&pod),
                Call::MkdirAll(run.clone(), 0o755),
                Call::MkdirAll(run.join("containers"), 0o755),
                Call::MkdirAll(run.join("etc"), 0o755),
                Call::MkdirAll(run.join("volumes"), 0o755),
            ]
        );
        // The guest's prepare is the tail of mount_system, after its mounts.
        let os = RecordingOs::new();
        mount_system(&os, &PodLayout::guest()).unwrap();
        let guest = RecordingOs::new();
        prepare_pod(&guest, &PodLayout::guest()).unwrap();
        assert!(os.calls().ends_with(&guest.calls()));
    }

    #[test]
    fn a_host_pods_etc_is_its_own_and_its_sysctls_are_refused_before_any_write() {
        let id = crate::pod::PodId::parse(&"9".repeat(64)).unwrap();
        let host = PodLayout::host(&id, Path::new("/run/p"));
        let mut spec = SandboxSpec {
            hostname: "pod1".into(),
            ..Default::default()
        };
        let os = RecordingOs::new();
        write_pod_etc(&os, &host, &spec).unwrap();
        let etc = Path::new("/run/p").join(id.as_str()).join("etc");
        assert_eq!(os.read_to_string(&etc.join("hostname")).unwrap(), "pod1\n");
        spec.sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        let os = RecordingOs::new();
        let e = write_pod_etc(&os, &host, &spec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(os.calls().is_empty());
    }

    #[test]
    fn a_failing_mount_is_an_error() {
        let os = RecordingOs::new()
            .failing(|c| matches!(c, Call::Mount { target, .. } if target == Path::new("/proc")));
        assert_eq!(
            mount_system(&os, &PodLayout::guest())
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn pod_etc_files_carry_the_sandbox_settings() {
        let os = RecordingOs::new();
        let mut spec = SandboxSpec {
            hostname: "pod1".into(),
            dns_servers: vec!["10.0.0.1".parse().unwrap()],
            dns_search: vec!["example.org".into()],
            hosts: vec![HostEntry {
                ip: "10.0.0.5".parse().unwrap(),
                names: vec!["db".into(), "db.local".into()],
            }],
            ..Default::default()
        };
        spec.sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        write_pod_etc(&os, &PodLayout::guest(), &spec).unwrap();
        let read = |name: &str| {
            os.read_to_string(&Path::new("/run/peapod/etc").join(name))
                .unwrap()
        };
        assert!(read("hosts").contains("10.0.0.5\tdb db.local\n"));
        assert!(read("hosts").contains("127.0.1.1\tpod1\n"));
        assert_eq!(
            read("resolv.conf"),
            "nameserver 10.0.0.1\nsearch example.org\n"
        );
        assert_eq!(read("hostname"), "pod1\n");

        // With a network, the hostname maps to the pod's address instead.
        spec.network = Some(crate::protocol::message::tests::sample_network());
        write_pod_etc(&os, &PodLayout::guest(), &spec).unwrap();
        let hosts = read("hosts");
        assert!(hosts.contains("10.88.0.5\tpod1\n"), "{hosts}");
        assert!(!hosts.contains("127.0.1.1"), "{hosts}");
        assert!(os.calls().contains(&Call::WriteFile(
            "/proc/sys/net/ipv4/ip_forward".into(),
            "1".into()
        )));
    }
}
