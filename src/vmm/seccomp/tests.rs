//! The filters compile, their sizes are what the module docs say, and installed in a child
//! process (one test binary re-run with a marker) they let the runtime and device work through
//! and kill the process with `SIGSYS` on anything else.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use super::*;

const KICK: i32 = 34;
const KINDS: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Device, ThreadKind::Main];

#[test]
fn every_filter_compiles_and_has_the_documented_size() {
    for kind in KINDS {
        let program = filter(kind, KICK).unwrap();
        assert!(!program.is_empty(), "{kind:?}");
    }
    // Keep the module docs' table in step with these.
    assert_eq!(allowed_count(ThreadKind::Vcpu, KICK), 47);
    assert_eq!(allowed_count(ThreadKind::Device, KICK), 60);
    assert_eq!(allowed_count(ThreadKind::Main, KICK), 37);
}

#[test]
fn every_allowed_syscall_says_why_and_is_listed_once_per_thread() {
    for kind in KINDS {
        let list = allowed(kind, KICK);
        for a in &list {
            assert!(!a.why.is_empty(), "{}", a.name);
        }
        let mut names: Vec<_> = list.iter().map(|a| a.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "{kind:?} lists a syscall twice");
    }
    let names = |kind| -> Vec<&str> { allowed(kind, KICK).iter().map(|a| a.name).collect() };
    assert!(names(ThreadKind::Vcpu).contains(&"ioctl"));
    assert!(!names(ThreadKind::Main).contains(&"ioctl"));
    assert!(!names(ThreadKind::Main).contains(&"socket"));
    for kind in KINDS {
        for never in [
            "execve", "clone", "clone3", "ptrace", "bind", "listen", "mount",
        ] {
            assert!(!names(kind).contains(&never), "{kind:?} allows {never}");
        }
    }
}

/// The marker that makes a test run its child side.
const CHILD: &str = "PEAPOD_SECCOMP_TEST_CHILD";

/// Re-runs this test binary for test `name` with `CHILD=role`; returns its status and output.
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

#[test]
fn a_forbidden_syscall_kills_the_vmm_with_sigsys_after_allowed_ones_worked() {
    const NAME: &str = "vmm::seccomp::tests::a_forbidden_syscall_kills_the_vmm_with_sigsys_after_allowed_ones_worked";
    if std::env::var(CHILD).as_deref() == Ok("forbidden") {
        let program = filter(ThreadKind::Vcpu, KICK).unwrap();
        install(ThreadKind::Vcpu, &program).unwrap();
        say("installed\n");
        // An allowed socket: AF_UNIX.
        // SAFETY: plain syscalls on values; the descriptor is closed right away.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        say("unix socket ok\n");
        // A forbidden one: AF_INET. The process dies here.
        // SAFETY: a plain syscall; it does not return.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        say("still alive\n");
        return;
    }
    let (status, out) = run_child(NAME, "forbidden");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}\n{out}");
    assert!(out.contains("installed\nunix socket ok\n"), "{out}");
    assert!(!out.contains("still alive"), "{out}");
}

#[test]
fn execve_and_other_ioctls_are_forbidden_on_a_vcpu_thread() {
    const NAME: &str =
        "vmm::seccomp::tests::execve_and_other_ioctls_are_forbidden_on_a_vcpu_thread";
    match std::env::var(CHILD).as_deref() {
        Ok("ioctl") => {
            install(ThreadKind::Vcpu, &filter(ThreadKind::Vcpu, KICK).unwrap()).unwrap();
            say("installed\n");
            // FIONBIO is the device thread's, not a vCPU's.
            let mut on: libc::c_int = 1;
            // SAFETY: ioctl on stdin with a pointer to a live int; it does not return.
            unsafe { libc::ioctl(0, libc::FIONBIO, &mut on) };
            say("still alive\n");
        }
        Ok("exec") => {
            install(ThreadKind::Main, &filter(ThreadKind::Main, KICK).unwrap()).unwrap();
            say("installed\n");
            let _ = Command::new("/bin/true").status();
            say("still alive\n");
        }
        Ok(_) => {}
        Err(_) => {
            for role in ["ioctl", "exec"] {
                let (status, out) = run_child(NAME, role);
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGSYS),
                    "{role}: {status:?}\n{out}"
                );
                assert!(out.contains("installed\n"), "{role}: {out}");
                assert!(!out.contains("still alive"), "{role}: {out}");
            }
        }
    }
}

/// What the device thread does while serving a VM, run for real under its filter: allocate
/// and free (small, large, growing), lock, wait with a timeout, sleep, read the clocks, log,
/// hash, serve a disk file (seek, read, write, flush), accept a host stream and make it
/// non-blocking, connect to a host listener, move data both ways, half-close, watch with
/// epoll, arm a timer, signal an eventfd, then let the thread end and the process exit.
fn device_workload(kind: ThreadKind) {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use vmm_sys_util::eventfd::EventFd;

    // Set up outside the filter, as the builder does.
    let dir = tempfile::tempdir().unwrap();
    let mut disk = tempfile::tempfile().unwrap();
    disk.write_all(&[7u8; 8192]).unwrap();
    let listen_path = dir.path().join("host.sock");
    let listener = UnixListener::bind(&listen_path).unwrap();
    let mut host = UnixStream::connect(&listen_path).unwrap();
    let (mut host_peer, _) = listener.accept().unwrap();
    host_peer.set_nonblocking(true).unwrap();
    // For the device thread to accept.
    let _pending = UnixStream::connect(&listen_path).unwrap();
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK).unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let lock = std::sync::Arc::new((std::sync::Mutex::new(0u32), std::sync::Condvar::new()));
    let program = filter(kind, KICK).unwrap();

    let thread_lock = lock.clone();
    let worker = std::thread::spawn(move || {
        install(kind, &program).unwrap();
        let mut big: Vec<u8> = Vec::new();
        for i in 0..24 {
            big.resize(1 << i, 1);
        }
        let boxes: Vec<Box<[u8; 4096]>> = (0..512).map(|_| Box::new([0; 4096])).collect();
        drop(boxes);
        drop(big);
        let mut map = std::collections::HashMap::new();
        map.insert("k", 1);
        let t0 = std::time::Instant::now();
        let _ = std::time::SystemTime::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        {
            let (m, cv) = &*thread_lock;
            let guard = m.lock().unwrap();
            let _ = cv.wait_timeout(guard, std::time::Duration::from_millis(2));
        }
        tracing::warn!("a log line from a filtered thread after {:?}", t0.elapsed());
        eprintln!("stderr from a filtered thread");

        if kind == ThreadKind::Device {
            disk.seek(SeekFrom::Start(512)).unwrap();
            let mut sector = [0u8; 512];
            disk.read_exact(&mut sector).unwrap();
            assert_eq!(sector, [7; 512]);
            disk.seek(SeekFrom::Start(0)).unwrap();
            disk.write_all(&[9; 512]).unwrap();
            disk.sync_data().unwrap();
            let (accepted, _) = listener.accept().unwrap();
            accepted.set_nonblocking(true).unwrap();
            epoll
                .add(&accepted, EpollEvent::new(EpollFlags::EPOLLIN, 1))
                .unwrap();
            let mut events = [EpollEvent::empty(); 4];
            let _ = epoll.wait(&mut events, EpollTimeout::ZERO).unwrap();
            epoll.delete(&accepted).unwrap();
        }
        // What vsock does on both kinds of threads: connect without blocking, move data.
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = nix::sys::socket::UnixAddr::new(&listen_path).unwrap();
        use std::os::fd::AsRawFd;
        nix::sys::socket::connect(fd.as_raw_fd(), &addr).unwrap();
        let mut stream = UnixStream::from(fd);
        stream.write_all(b"CONNECT 52\n").unwrap();
        host.write_all(b"hi").unwrap();
        let mut two = [0u8; 2];
        let mut got = 0;
        while got < 2 {
            match host_peer.read(&mut two[got..]) {
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        epoll
            .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, 2))
            .unwrap();
        timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(std::time::Duration::from_secs(5))),
                TimerSetTimeFlags::empty(),
            )
            .unwrap();
        timer.unset().unwrap();
        evt.write(1).unwrap();
        assert_eq!(evt.read().unwrap(), 1);
        drop(stream);
        drop(epoll);
        drop(host);
        // The muxer's Drop.
        std::fs::remove_file(&listen_path).unwrap();
        say("workload done\n");
    });
    worker.join().unwrap();
    lock.1.notify_all();
}

#[test]
fn device_code_runs_under_the_device_and_vcpu_filters() {
    const NAME: &str = "vmm::seccomp::tests::device_code_runs_under_the_device_and_vcpu_filters";
    match std::env::var(CHILD).as_deref() {
        Ok("device") => device_workload(ThreadKind::Device),
        Ok("vcpu") => device_workload(ThreadKind::Vcpu),
        Ok(_) => {}
        Err(_) => {
            for role in ["device", "vcpu"] {
                let (status, out) = run_child(NAME, role);
                assert!(status.success(), "{role}: {status:?}\n{out}");
                assert!(out.contains("workload done"), "{role}: {out}");
            }
        }
    }
}

/// The main thread's life after the VM started, under its filter: wait on a condvar, kick a
/// thread with the kick signal until it leaves, join it, log, write an event line, drop big
/// memory, and exit.
#[test]
fn the_main_threads_waiting_kicking_and_exit_run_under_its_filter() {
    const NAME: &str =
        "vmm::seccomp::tests::the_main_threads_waiting_kicking_and_exit_run_under_its_filter";
    match std::env::var(CHILD).as_deref() {
        Ok("main") => {
            use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};
            extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
            let kick = SIGRTMIN();
            register_signal_handler(kick, on_kick).unwrap();
            let stop = crate::vmm::stop::VmStop::new();
            let for_thread = stop.clone();
            let vcpu_program = filter(ThreadKind::Vcpu, kick).unwrap();
            let vcpu = std::thread::spawn(move || {
                install(ThreadKind::Vcpu, &vcpu_program).unwrap();
                for_thread.request(crate::vmm::stop::GuestExit::Reboot);
                // A vCPU in the guest: sleeps until kicked (the kick interrupts the sleep).
                std::thread::sleep(std::time::Duration::from_millis(200));
            });
            let (r, mut w) = std::io::pipe().unwrap();
            let memory = vec![1u8; 64 << 20];
            install(ThreadKind::Main, &filter(ThreadKind::Main, kick).unwrap()).unwrap();
            let _ = stop.wait();
            while !vcpu.is_finished() {
                let _ = vcpu.kill(kick);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            vcpu.join().unwrap();
            tracing::warn!("the VM ended");
            writeln!(w, "{{\"event\":\"exited\"}}").unwrap();
            drop((w, r, memory));
            say("main done\n");
        }
        Ok(_) => {}
        Err(_) => {
            let (status, out) = run_child(NAME, "main");
            assert!(status.success(), "{status:?}\n{out}");
            assert!(out.contains("main done"), "{out}");
        }
    }
}

/// What virtio-net does with its tap, under the filters of the threads that do it: the
/// driver's start (offloads, watching the tap) on a vCPU thread, frames both ways and
/// watching on the device thread. Needs root for the tap (in a fresh network namespace).
#[test]
fn net_tap_calls_run_under_the_vcpu_and_device_filters() {
    const NAME: &str = "vmm::seccomp::tests::net_tap_calls_run_under_the_vcpu_and_device_filters";
    use crate::vmm::virtio::net::{Backend, Tap};
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    match std::env::var(CHILD).as_deref() {
        Ok("net") => {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                say(&format!("skipped: cannot make a network namespace: {e}\n"));
                return;
            }
            use std::os::fd::AsRawFd;
            let fd = crate::vmm::virtio::net::tap::create_tap("peapod-s0").unwrap();
            let mut tap = Tap::from_inherited(fd.as_raw_fd()).unwrap();
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
            let vcpu = filter(ThreadKind::Vcpu, KICK).unwrap();
            let device = filter(ThreadKind::Device, KICK).unwrap();
            let tap = std::thread::spawn(move || {
                install(ThreadKind::Vcpu, &vcpu).unwrap();
                tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
                    .unwrap();
                epoll
                    .add(tap.fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
                    .unwrap();
                say("vcpu ok\n");
                (tap, epoll)
            })
            .join()
            .unwrap();
            std::thread::spawn(move || {
                let (mut tap, epoll) = tap;
                install(ThreadKind::Device, &device).unwrap();
                let mut buf = [0u8; 128];
                let err = tap.recv(&mut buf).unwrap_err();
                assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
                // The tap is down, so the kernel refuses the frame: the write was allowed.
                let frame = [0u8; 12 + 60];
                let err = tap.send(&frame).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EIO));
                epoll.delete(tap.fd()).unwrap();
                drop(tap);
                say("device ok\n");
            })
            .join()
            .unwrap();
        }
        Ok(_) => {}
        Err(_) => {
            let (status, out) = run_child(NAME, "net");
            if out.contains("skipped:") {
                eprintln!("{out}");
                return;
            }
            assert!(status.success(), "{status:?}\n{out}");
            assert!(out.contains("vcpu ok\ndevice ok\n"), "{out}");
        }
    }
}

#[test]
fn the_register_ioctls_allowed_for_fault_reports_have_kvms_numbers() {
    let ior = |nr: u64, size: usize| (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
    assert_eq!(
        KVM_GET_REGS,
        ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>())
    );
    assert_eq!(
        KVM_GET_SREGS,
        ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>())
    );
}
