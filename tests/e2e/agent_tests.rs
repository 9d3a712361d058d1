//! The guest agent end to end: containers in pod VMs, through `peapod vm run-container` and,
//! for what the command does not expose (exec, two containers in one pod, signals from the
//! host), through the runtime library ([`peapod::runtime::PodVm`]) driving the protocol.
//!
//! Each case boots one pod VM (a few seconds in the test bed), so checks that fit one boot
//! share it. Artifacts: the agent initramfs (rootfs/build-agent-initramfs.sh), a busybox
//! container image (rootfs/build-test-image.sh), the guest kernel, and the plain test
//! initramfs for the no-agent case.

use std::io::Read;
use std::process::Output;
use std::time::Duration;

use libtest_mimic::Failed;
use peapod::protocol::{
    ContainerSpec, ExitStatus, MountSource, MountSpec, ProcessRef, ProcessSpec, Resources,
    RootfsSpec, SandboxSpec, SandboxVolume, SandboxVolumeKind, StreamKind,
};
use peapod::runtime::oneshot::detect_fs_type;
use peapod::runtime::{PodVm, PodVmConfig};
use peapod::vmm::program::VmmProgram;

use crate::support::{
    AGENT_INITRAMFS_ENV, Case, GUEST_KERNEL_ENV, Place, TEST_IMAGE_ENV, TEST_INITRAMFS_ENV,
    artifact, check, peapod, run_peapod_env,
};

pub fn cases() -> Vec<Case> {
    let case = |name, run| Case {
        name,
        place: Place::Kvm,
        run,
        skip_if: None,
    };
    vec![
        case(
            "agent_container_echo_prints_and_exits_0",
            container_echo_prints_and_exits_0,
        ),
        case("agent_container_exit_7_gives_7", container_exit_7_gives_7),
        case(
            "agent_container_killed_by_a_signal_gives_128_plus_n",
            container_killed_by_a_signal_gives_128_plus_n,
        ),
        case(
            "agent_container_env_cwd_and_uid_are_as_asked",
            container_env_cwd_and_uid_are_as_asked,
        ),
        case(
            "agent_container_over_its_memory_limit_is_oom_killed",
            container_over_its_memory_limit_is_oom_killed,
        ),
        case(
            "agent_pod_exec_two_containers_namespaces_and_host_signals",
            pod_exec_two_containers_namespaces_and_host_signals,
        ),
        case("agent_container_stdin_and_tty", container_stdin_and_tty),
        case(
            "agent_pod_volumes_read_only_root_and_restart",
            pod_volumes_read_only_root_and_restart,
        ),
        case(
            "agent_missing_is_a_clear_error",
            guest_without_agent_is_a_clear_error,
        ),
    ]
}

/// `peapod vm run-container` with the test image and the agent initramfs from the artifacts.
fn run_container(extra: &[&str], cmd: &[&str]) -> Result<Output, Failed> {
    let image = artifact(TEST_IMAGE_ENV)?;
    let initrd = artifact(AGENT_INITRAMFS_ENV)?;
    let kernel = artifact(GUEST_KERNEL_ENV)?;
    let mut args: Vec<String> = vec!["vm".into(), "run-container".into(), "--rootfs".into()];
    args.push(image.display().to_string());
    args.extend(["--initrd".into(), initrd.display().to_string()]);
    args.extend(["--kernel".into(), kernel.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_peapod_env(&args, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn container_echo_prints_and_exits_0() -> Result<(), Failed> {
    let out = run_container(&[], &["echo", "hello from a pea"])?;
    check(out.status.code() == Some(0), "exit status 0", &out)?;
    check(
        text(&out.stdout) == "hello from a pea\n",
        "exactly the container's output on stdout",
        &out,
    )
}

fn container_exit_7_gives_7() -> Result<(), Failed> {
    let out = run_container(&[], &["sh", "-c", "echo to-stderr >&2; exit 7"])?;
    check(out.status.code() == Some(7), "exit status 7", &out)?;
    check(
        text(&out.stderr).contains("to-stderr"),
        "the container's stderr reaches stderr",
        &out,
    )
}

fn container_killed_by_a_signal_gives_128_plus_n() -> Result<(), Failed> {
    let out = run_container(&[], &["sh", "-c", "echo before; kill -TERM $$; echo after"])?;
    check(out.status.code() == Some(143), "exit status 128+15", &out)?;
    check(text(&out.stdout) == "before\n", "it died at the kill", &out)?;
    check(
        text(&out.stderr).contains("killed by signal 15 (SIGTERM)"),
        "peapod says which signal killed it",
        &out,
    )
}

fn container_env_cwd_and_uid_are_as_asked() -> Result<(), Failed> {
    let out = run_container(
        &[
            "--env",
            "GREETING=hi there",
            "--workdir",
            "/tmp",
            "--user",
            "1000:1000",
        ],
        &[
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; id -u; id -g; touch f && echo wrote",
        ],
    )?;
    check(out.status.code() == Some(0), "exit status 0", &out)?;
    check(
        text(&out.stdout) == "hi there\n/tmp\n1000\n1000\nwrote\n",
        "env, cwd and uid/gid as asked, and the overlay is writable",
        &out,
    )
}

fn container_over_its_memory_limit_is_oom_killed() -> Result<(), Failed> {
    // dd fills a 64 MiB buffer: twice the limit.
    let out = run_container(
        &["--memory-limit", "32"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    )?;
    check(out.status.code() == Some(137), "exit status 128+9", &out)?;
    check(
        text(&out.stderr).contains("OOM killer"),
        "peapod says it was an OOM kill",
        &out,
    )
}

/// `run-container` with `input` on its stdin.
fn run_container_with_input(extra: &[&str], cmd: &[&str], input: &[u8]) -> Result<Output, Failed> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let image = artifact(TEST_IMAGE_ENV)?;
    let initrd = artifact(AGENT_INITRAMFS_ENV)?;
    let kernel = artifact(GUEST_KERNEL_ENV)?;
    let mut child = Command::new(peapod())
        .args(["vm", "run-container", "--rootfs"])
        .arg(&image)
        .arg("--initrd")
        .arg(&initrd)
        .arg("--kernel")
        .arg(&kernel)
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", peapod().display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    stdin
        .write_all(input)
        .map_err(|e| format!("writing stdin: {e}"))?;
    drop(stdin);
    child
        .wait_with_output()
        .map_err(|e| format!("waiting for peapod: {e}").into())
}

fn container_stdin_and_tty() -> Result<(), Failed> {
    // Pipes: stdin reaches the process, and its end of file too.
    let out = run_container_with_input(&["-i"], &["sh", "-c", "cat; echo eof"], b"piped in\n")?;
    check(out.status.code() == Some(0), "exit status 0", &out)?;
    check(
        text(&out.stdout) == "piped in\neof\n",
        "stdin went through to the end",
        &out,
    )?;
    // A pty: an interactive shell reads the commands typed into it, and its terminal has a
    // name inside the container.
    let out = run_container_with_input(
        &["-t", "-i"],
        &["sh"],
        b"tty\necho typed-$((6*7))\nexit 5\n",
    )?;
    check(
        out.status.code() == Some(5),
        "the shell's exit status",
        &out,
    )?;
    let got = text(&out.stdout);
    check(
        got.contains("typed-42\r\n") && got.contains("/dev/pts/0\r\n"),
        "the shell ran the typed lines on a pty (CRLF) named /dev/pts/0",
        &out,
    )
}

fn guest_without_agent_is_a_clear_error() -> Result<(), Failed> {
    let image = artifact(TEST_IMAGE_ENV)?;
    let plain = artifact(TEST_INITRAMFS_ENV)?;
    let kernel = artifact(GUEST_KERNEL_ENV)?;
    let (image, plain, kernel) = (
        image.display().to_string(),
        plain.display().to_string(),
        kernel.display().to_string(),
    );
    let out = run_peapod_env(
        &[
            "vm",
            "run-container",
            "--rootfs",
            &image,
            "--initrd",
            &plain,
            "--kernel",
            &kernel,
            "--",
            "true",
        ],
        &[("PEAPOD_AGENT_TIMEOUT", "30")],
    )?;
    check(
        out.status.code() == Some(125),
        "peapod's own failure status",
        &out,
    )?;
    let err = text(&out.stderr);
    check(
        err.contains("agent did not answer") || err.contains("before its agent answered"),
        "the error says the agent never answered",
        &out,
    )?;
    check(
        err.contains("agent initramfs") && err.contains(&plain),
        "it names the initrd and the fix",
        &out,
    )?;
    check(
        err.contains("Last guest console output"),
        "it quotes the guest's console",
        &out,
    )
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        tty: false,
        stdin: false,
    }
}

fn read_stream(vm: &PodVm, p: &ProcessRef, kind: StreamKind) -> Result<String, Failed> {
    let mut conn = vm.attach(p, kind).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut s = String::new();
    conn.read_to_string(&mut s)
        .map_err(|e| format!("reading {} of {p}: {e}", kind.as_str()))?;
    Ok(s)
}

/// Runs an exec to its end: its stdout and status.
fn exec(
    vm: &mut PodVm,
    container: &str,
    id: &str,
    args: &[&str],
) -> Result<(String, ExitStatus), Failed> {
    vm.client()
        .exec(container, id, &process(args))
        .map_err(|e| format!("exec {id}: {e}"))?;
    let p = ProcessRef::exec(container, id);
    let out = read_stream(vm, &p, StreamKind::Stdout)?;
    let status = vm.client().wait(&p).map_err(|e| format!("wait {p}: {e}"))?;
    Ok((out, status))
}

fn fail(what: &str, got: &dyn std::fmt::Debug, vm: &PodVm) -> Failed {
    format!("{what}: got {got:?}\nguest console:\n{}", vm.console_tail()).into()
}

fn pod_exec_two_containers_namespaces_and_host_signals() -> Result<(), Failed> {
    let image = artifact(TEST_IMAGE_ENV)?;
    let fs_type = detect_fs_type(&image).map_err(|e| e.to_string())?;
    let mut vm = PodVm::start(&PodVmConfig {
        vmm: VmmProgram::next_to(&peapod()),
        kernel: artifact(GUEST_KERNEL_ENV)?,
        initrd: artifact(AGENT_INITRAMFS_ENV)?,
        cpus: 1,
        memory_mib: 256,
        disks: vec![(image, true)],
        agent_timeout: Duration::from_secs(120),
        dir: None,
        net: None,
        jail: true,
        cgroup: None,
    })
    .map_err(|e| e.to_string())?;
    let c = vm.client();
    c.create_sandbox(&SandboxSpec {
        hostname: "pod-e2e".into(),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let spec = |id: &str, args: &[&str]| ContainerSpec {
        id: id.into(),
        hostname: None,
        rootfs: RootfsSpec {
            device: "/dev/vda".into(),
            fs_type,
            read_only: false,
        },
        mounts: vec![],
        process: process(args),
        resources: Resources {
            pids_max: Some(64),
            ..Default::default()
        },
        privileged: false,
    };
    // a: writes a file in its overlay and stays up.
    c.create_container(&spec(
        "a",
        &[
            "sh",
            "-c",
            "echo from-a > /tmp/shared; echo up; exec sleep 600",
        ],
    ))
    .map_err(|e| e.to_string())?;
    c.start_container("a").map_err(|e| e.to_string())?;
    let a = ProcessRef::container("a");
    let mut a_out = vm
        .attach(&a, StreamKind::Stdout)
        .map_err(|e| e.to_string())?;
    let mut up = [0u8; 3];
    a_out
        .read_exact(&mut up)
        .map_err(|e| fail("container a's first output", &e, &vm))?;

    // An exec sees a's filesystem and PID namespace, and no agent process.
    let (out, status) = exec(
        &mut vm,
        "a",
        "e1",
        &[
            "sh",
            "-c",
            "cat /tmp/shared; [ $(readlink /proc/1/ns/pid) = $(readlink /proc/self/ns/pid) ] && echo same-pidns; \
             readlink /proc/self/ns/net; for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done",
        ],
    )?;
    if status != ExitStatus::exited(0) {
        return Err(fail("exec e1's status", &(status, out), &vm));
    }
    let lines: Vec<&str> = out.lines().collect();
    if lines.first() != Some(&"from-a") || lines.get(1) != Some(&"same-pidns") {
        return Err(fail("exec sees a's file and PID namespace", &out, &vm));
    }
    let a_net = lines.get(2).copied().unwrap_or_default().to_string();
    if lines.iter().any(|l| l.starts_with("/init")) {
        return Err(fail(
            "the agent (/init) must be invisible in the container",
            &out,
            &vm,
        ));
    }
    if !lines.iter().any(|l| l.starts_with("sleep 600")) {
        return Err(fail(
            "the container's own process is visible to the exec",
            &out,
            &vm,
        ));
    }

    // b: another container of the pod: same network namespace, its own PID namespace and
    // filesystem.
    let c = vm.client();
    c.create_container(&spec(
        "b",
        &[
            "sh",
            "-c",
            "readlink /proc/self/ns/net; echo $$; ls /tmp/shared 2>/dev/null || echo no-shared; hostname",
        ],
    ))
    .map_err(|e| e.to_string())?;
    c.start_container("b").map_err(|e| e.to_string())?;
    let b = ProcessRef::container("b");
    let b_out = read_stream(&vm, &b, StreamKind::Stdout)?;
    let b_status = vm.client().wait(&b).map_err(|e| e.to_string())?;
    let b_lines: Vec<&str> = b_out.lines().collect();
    if b_status != ExitStatus::exited(0) || b_lines.len() != 4 {
        return Err(fail(
            "container b's output and status",
            &(b_status, &b_out),
            &vm,
        ));
    }
    if b_lines[0] != a_net {
        return Err(fail(
            "containers of a pod share the network namespace",
            &(&a_net, b_lines[0]),
            &vm,
        ));
    }
    if b_lines[1] != "2" || b_lines[2] != "no-shared" || b_lines[3] != "pod-e2e" {
        return Err(fail(
            "b has its own PID namespace (its shell is PID 2 under its init) and its own \
             overlay, and the pod's hostname",
            &b_lines,
            &vm,
        ));
    }

    // An exec with a pty of its own, in a's devpts.
    let mut tty_exec = process(&["sh", "-c", "tty; [ -t 0 ] && echo on-a-tty"]);
    tty_exec.tty = true;
    vm.client()
        .exec("a", "t1", &tty_exec)
        .map_err(|e| format!("exec t1: {e}"))?;
    let t1 = ProcessRef::exec("a", "t1");
    let pty_out = read_stream(&vm, &t1, StreamKind::Pty)?;
    let t1_status = vm.client().wait(&t1).map_err(|e| e.to_string())?;
    if t1_status != ExitStatus::exited(0) || !pty_out.contains("/dev/pts/0\r\non-a-tty\r\n") {
        return Err(fail("exec with a tty", &(t1_status, pty_out), &vm));
    }

    // Stats (its process counts, container-init, outside the cgroup as a shim is, does
    // not), then a signal from the host ends a: 128+9.
    let stats = vm.client().stats("a").map_err(|e| e.to_string())?;
    if stats.pids_current < 1 || stats.memory_current == 0 {
        return Err(fail("a's cgroup counters", &stats, &vm));
    }
    vm.client().signal(&a, 9).map_err(|e| e.to_string())?;
    let a_status = vm.client().wait(&a).map_err(|e| e.to_string())?;
    if a_status.code != 137 || a_status.signal != Some(9) || a_status.oom_killed {
        return Err(fail("a killed by SIGKILL from the host", &a_status, &vm));
    }
    for id in ["a", "b"] {
        vm.client()
            .remove_container(id)
            .map_err(|e| fail("remove", &e.to_string(), &vm))?;
    }
    vm.shutdown().map_err(|e| e.to_string())?;
    Ok(())
}

/// Pod volumes, a read-only root and a restart in one pod: container `w` (read-only root)
/// appends to an emptyDir sub_path and reads a secret; it is removed and created again with
/// the same id and spec, and finds its earlier line; container `r` sees both lines through
/// a read-only mount of the whole volume.
fn pod_volumes_read_only_root_and_restart() -> Result<(), Failed> {
    let image = artifact(TEST_IMAGE_ENV)?;
    let fs_type = detect_fs_type(&image).map_err(|e| e.to_string())?;
    let mut vm = PodVm::start(&PodVmConfig {
        vmm: VmmProgram::next_to(&peapod()),
        kernel: artifact(GUEST_KERNEL_ENV)?,
        initrd: artifact(AGENT_INITRAMFS_ENV)?,
        cpus: 1,
        memory_mib: 256,
        disks: vec![(image, true)],
        agent_timeout: Duration::from_secs(120),
        dir: None,
        net: None,
        jail: true,
        cgroup: None,
    })
    .map_err(|e| e.to_string())?;
    vm.client()
        .create_sandbox(&SandboxSpec {
            hostname: "pod-volumes".into(),
            volumes: vec![
                SandboxVolume {
                    name: "cache".into(),
                    kind: SandboxVolumeKind::EmptyDir {
                        size_bytes: Some(1 << 20),
                    },
                },
                SandboxVolume {
                    name: "tls".into(),
                    kind: SandboxVolumeKind::Secret {
                        files: [("key".to_string(), b"s3cret".to_vec())].into(),
                    },
                },
            ],
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let volume = |dest: &str, name: &str, sub: Option<&str>, read_only| MountSpec {
        destination: dest.into(),
        source: MountSource::PodVolume {
            name: name.into(),
            sub_path: sub.map(str::to_string),
        },
        read_only,
    };
    let writer = ContainerSpec {
        id: "w".into(),
        hostname: None,
        rootfs: RootfsSpec {
            device: "/dev/vda".into(),
            fs_type,
            read_only: true,
        },
        mounts: vec![
            volume("/cache", "cache", Some("w/logs"), false),
            volume("/secret", "tls", None, false),
            volume("/etc/key", "tls", Some("key"), false),
        ],
        process: process(&[
            "sh",
            "-c",
            "touch /rootfile 2>/dev/null && echo root-writable || echo root-ro; \
             echo run >> /cache/log && wc -l < /cache/log; \
             stat -c '%a %u' /secret/key /secret; cat /etc/key; echo; \
             echo x > /secret/key 2>/dev/null && echo secret-writable || echo secret-ro",
        ]),
        resources: Resources::default(),
        privileged: false,
    };
    let w = ProcessRef::container("w");
    let mut outputs = Vec::new();
    for round in 0..2 {
        if round == 1 {
            // The restart: remove, then create with the same id and spec, start, attach.
            vm.client()
                .remove_container("w")
                .map_err(|e| fail("removing w", &e, &vm))?;
        }
        vm.client()
            .create_container(&writer)
            .map_err(|e| fail(&format!("creating w (round {round})"), &e, &vm))?;
        vm.client()
            .start_container("w")
            .map_err(|e| fail(&format!("starting w (round {round})"), &e, &vm))?;
        let out = read_stream(&vm, &w, StreamKind::Stdout)?;
        let status = vm.client().wait(&w).map_err(|e| e.to_string())?;
        if status != ExitStatus::exited(0) {
            return Err(fail("w's status", &(status, out), &vm));
        }
        outputs.push(out);
    }
    for (round, lines) in ["1", "2"].iter().enumerate() {
        let want = format!("root-ro\n{lines}\n400 0\n555 0\ns3cret\nsecret-ro\n");
        if outputs[round] != want {
            return Err(fail(
                &format!("w's output in round {round} (want {want:?})"),
                &outputs[round],
                &vm,
            ));
        }
    }
    let reader = ContainerSpec {
        id: "r".into(),
        mounts: vec![volume("/c", "cache", None, true)],
        rootfs: RootfsSpec {
            read_only: false,
            ..writer.rootfs.clone()
        },
        process: process(&[
            "sh",
            "-c",
            "cat /c/w/logs/log; touch /c/x 2>/dev/null && echo volume-writable || echo volume-ro; \
             touch /rootfile && echo root-writable",
        ]),
        ..writer.clone()
    };
    vm.client()
        .create_container(&reader)
        .map_err(|e| fail("creating r", &e, &vm))?;
    vm.client()
        .start_container("r")
        .map_err(|e| fail("starting r", &e, &vm))?;
    let r = ProcessRef::container("r");
    let out = read_stream(&vm, &r, StreamKind::Stdout)?;
    let status = vm.client().wait(&r).map_err(|e| e.to_string())?;
    if status != ExitStatus::exited(0) || out != "run\nrun\nvolume-ro\nroot-writable\n" {
        return Err(fail(
            "r sees both runs through a read-only mount and has a writable root",
            &(status, out),
            &vm,
        ));
    }
    Ok(())
}
