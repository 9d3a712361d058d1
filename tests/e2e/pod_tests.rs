//! Pods that outlive their command: `peapod run`, `ps`, `logs`, `exec`, `stop`, `kill`, `rm`,
//! `wait`, `inspect`, each a separate CLI invocation as a user types them, and the per-pod
//! supervisor behind them.
//!
//! Each test has its own image store and run directory (`PEAPOD_ROOT`, `PEAPOD_RUN_DIR`),
//! so tests running side by side never see each other's pods. After `rm`, a test checks that
//! nothing of the pod is left: no process naming its id, no socket or directory, no mount.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::support::{Case, Place, check, peapod};

pub fn cases() -> Vec<Case> {
    let kvm = |name, run| Case {
        name,
        place: Place::Kvm,
        run,
        skip_if: None,
    };
    let host = |name, run| Case {
        name,
        place: Place::Host,
        run,
        skip_if: None,
    };
    vec![
        kvm("pods_run_in_the_foreground", run_in_the_foreground),
        kvm("pods_detached_lifecycle", detached_lifecycle),
        kvm(
            "pods_survive_a_killed_cli_not_a_killed_supervisor",
            killed_processes,
        ),
        kvm("pods_ten_in_parallel_and_one_name_once", ten_in_parallel),
        host("pods_bad_input_creates_nothing", bad_input_creates_nothing),
    ]
}

/// A store and run directory of the test's own.
pub struct Pods {
    dir: tempfile::TempDir,
    networked: bool,
    /// `--runtime` for every pod (`PEAPOD_RUNTIME`): the VM runtime when `None`.
    runtime: Option<&'static str>,
}

impl Pods {
    /// Pods without a network (`PEAPOD_NETWORK=none`): every pod VM whose NIC is busy makes
    /// the emulated L1's KVM panic more often (README, Tests), so only the tests of
    /// networking itself ([`Pods::networked`]) attach pods to one.
    pub fn new() -> Result<Self, Failed> {
        Ok(Pods {
            dir: tempfile::tempdir()?,
            networked: false,
            runtime: None,
        })
    }

    /// The same pods as plain containers on this machine's kernel (`--runtime container`).
    pub fn containers(networked: bool) -> Result<Self, Failed> {
        Ok(Pods {
            dir: tempfile::tempdir()?,
            networked,
            runtime: Some("container"),
        })
    }

    /// Pods on peapod's default network, as a user's are.
    pub fn networked() -> Result<Self, Failed> {
        Ok(Pods {
            dir: tempfile::tempdir()?,
            networked: true,
            runtime: None,
        })
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(peapod());
        c.args(args)
            .env("PEAPOD_ROOT", self.root())
            .env("PEAPOD_RUN_DIR", self.run_dir())
            // Ten pod VMs booting at once in the emulated L1 can take longer than the
            // default minute to reach their agents.
            .env("PEAPOD_AGENT_TIMEOUT", "180");
        if self.networked {
            c.env_remove("PEAPOD_NETWORK");
        } else {
            c.env("PEAPOD_NETWORK", "none");
        }
        match self.runtime {
            Some(runtime) => c.env("PEAPOD_RUNTIME", runtime),
            None => c.env_remove("PEAPOD_RUNTIME"),
        };
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<Output, Failed> {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run peapod {args:?}: {e}").into())
    }

    /// `peapod ARGS` that must exit 0; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String, Failed> {
        let out = self.run(args)?;
        check(
            out.status.success(),
            &format!("peapod {args:?} succeeds"),
            &out,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `ps -a --format json` object of pod `name`.
    pub fn ps_entry(&self, name: &str) -> Result<Option<serde_json::Value>, Failed> {
        let out = self.ok(&["ps", "-a", "--format", "json"])?;
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("ps printed a line that is not JSON ({e}): {line}"))?;
            if v["name"] == name {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    pub fn status_of(&self, name: &str) -> Result<String, Failed> {
        Ok(self
            .ps_entry(name)?
            .map(|v| v["status_text"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| "(not listed)".into()))
    }

    /// Waits until `ps` shows pod `name` with a status starting with `prefix`.
    pub fn wait_status(&self, name: &str, prefix: &str, timeout: Duration) -> Result<(), Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status_of(name)?;
            if status.starts_with(prefix) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(
                    format!("pod {name} is {status:?}, not {prefix} after {timeout:?}").into(),
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pod's `inspect` object.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value, Failed> {
        let out = self.ok(&["inspect", name])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("inspect is not JSON ({e}): {out}"))?;
        Ok(v[0].clone())
    }

    /// Fails when anything of pod `id` is left: a process naming it or holding one of its
    /// files open (a supervisor or host agent forked from the CLI carries the CLI's command
    /// line, but keeps its log and lock in the pod's directories open), its directories, a
    /// mount.
    pub fn nothing_left_of(&self, id: &str) -> Result<(), Failed> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut procs = processes_naming(id);
            procs.extend(processes_holding(id));
            if procs.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("processes of pod {id} left: {procs:?}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for dir in [self.run_dir().join(id), self.root().join("pods").join(id)] {
            if dir.exists() {
                return Err(format!("{} is left behind", dir.display()).into());
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        if mounts.contains(id) {
            return Err(format!("a mount of pod {id} is left: {mounts}").into());
        }
        Ok(())
    }
}

/// Processes (pid, command line) whose command line names `needle`, this one excepted.
pub fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    other_processes()
        .into_iter()
        .filter_map(|(pid, dir)| {
            let raw = std::fs::read(dir.join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Processes (other than this one) with an open descriptor whose path contains `needle`,
/// with that path.
pub fn processes_holding(needle: &str) -> Vec<(u32, String)> {
    other_processes()
        .into_iter()
        .filter_map(|(pid, dir)| {
            let fds = std::fs::read_dir(dir.join("fd")).ok()?;
            let held = fds.flatten().find_map(|fd| {
                let target = std::fs::read_link(fd.path()).ok()?;
                let target = target.to_string_lossy().into_owned();
                target.contains(needle).then_some(target)
            })?;
            Some((pid, held))
        })
        .collect()
}

/// Every process but this one: its pid and its `/proc` directory.
fn other_processes() -> Vec<(u32, std::path::PathBuf)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            (pid != me).then(|| (pid, e.path()))
        })
        .collect()
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

const IMAGE: &str = "peapod/busybox:latest";

/// `peapod run` in the foreground: output, exit codes, 127, a tty, stdin, --rm.
fn run_in_the_foreground() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let out = pods.run(&["run", "--rm", IMAGE, "echo", "hi"])?;
    check(
        out.status.success() && out.stdout == b"hi\n",
        "run --rm echo hi prints hi and exits 0",
        &out,
    )?;
    let out = pods.run(&["run", "--rm", IMAGE, "sh", "-c", "echo err >&2; exit 3"])?;
    check(
        out.status.code() == Some(3) && String::from_utf8_lossy(&out.stderr).contains("err"),
        "sh -c 'exit 3' exits 3, its stderr on stderr",
        &out,
    )?;
    let out = pods.run(&["run", "--rm", IMAGE, "/no/such/command"])?;
    check(
        out.status.code() == Some(127)
            && String::from_utf8_lossy(&out.stderr).contains("/no/such/command"),
        "a missing command exits 127 and is named",
        &out,
    )?;
    let out = pods.run(&[
        "run",
        "--rm",
        "-t",
        IMAGE,
        "sh",
        "-c",
        "test -t 1 && echo a-tty",
    ])?;
    check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("a-tty"),
        "run -t gives the container a terminal",
        &out,
    )?;
    let mut child = pods
        .command(&[
            "run",
            "--rm",
            "-i",
            IMAGE,
            "sh",
            "-c",
            "read line; echo got $line",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"piped\n")?;
    }
    let out = child.wait_with_output()?;
    check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("got piped"),
        "run -i passes stdin",
        &out,
    )?;
    // --rm left nothing: no pod listed, no pod directory.
    let listed = pods.ok(&["ps", "-aq"])?;
    if !listed.trim().is_empty() {
        return Err(format!("--rm pods are still listed: {listed}").into());
    }
    let left: Vec<_> = std::fs::read_dir(pods.root().join("pods"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    if left.iter().any(|n| n.len() == 64) {
        return Err(format!("--rm pods left directories: {left:?}").into());
    }
    Ok(())
}

/// `run -d`, then separate CLIs: ps, logs, logs -f, exec, exec -t, stop, ps -a, rm.
fn detached_lifecycle() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let id = pods.ok(&[
        "run",
        "-d",
        "--name",
        "w1",
        IMAGE,
        "sh",
        "-c",
        "echo start; sleep 600",
    ])?;
    let id = id.trim().to_string();
    if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("run -d printed {id:?}, not a 64-digit id").into());
    }
    pods.wait_status("w1", "Up", Duration::from_secs(10))?;
    let ps = pods.ok(&["ps"])?;
    if !ps.contains("w1") || !ps.contains(&id[..12]) {
        return Err(format!("ps does not list w1 by name and short id:\n{ps}").into());
    }
    // logs: what the container wrote so far.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pods.ok(&["logs", "w1"])?.contains("start") {
        if Instant::now() > deadline {
            return Err("logs w1 never showed `start`".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stamped = pods.ok(&["logs", "--timestamps", "w1"])?;
    if !stamped
        .lines()
        .any(|l| l.ends_with(" start") && l.starts_with("20"))
    {
        return Err(format!("logs --timestamps: {stamped:?}").into());
    }
    // logs -f follows a line written later (by an exec, to the container's own stdout).
    let mut follow = pods
        .command(&["logs", "-f", "w1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let reader = BufReader::new(follow.stdout.take().ok_or("no stdout")?);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    pods.ok(&["exec", "w1", "--", "sh", "-c", "echo later > /proc/1/fd/1"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line == "later" => break,
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() > deadline => {
                let _ = follow.kill();
                return Err(format!("logs -f did not follow `later`; saw {seen:?}").into());
            }
            Err(_) => {}
        }
    }
    // exec: output and exit codes, a tty.
    let out = pods.run(&["exec", "w1", "--", "echo", "ok"])?;
    check(
        out.status.success() && out.stdout == b"ok\n",
        "exec w1 -- echo ok",
        &out,
    )?;
    let out = pods.run(&["exec", "w1", "--", "sh", "-c", "exit 5"])?;
    check(out.status.code() == Some(5), "exec's exit code", &out)?;
    let out = pods.run(&[
        "exec",
        "-t",
        "w1",
        "--",
        "sh",
        "-c",
        "test -t 0 && echo exec-tty",
    ])?;
    check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("exec-tty"),
        "exec -t has a terminal",
        &out,
    )?;
    let out = pods.run(&["exec", "w1", "--", "/no/such"])?;
    check(
        out.status.code() == Some(127),
        "exec of a missing command exits 127",
        &out,
    )?;
    let inspect = pods.inspect("w1")?;
    if inspect["id"] != id.as_str() || inspect["vm"]["vmm_pid"].as_u64().is_none() {
        return Err(format!("inspect: {inspect}").into());
    }
    vmm_is_jailed(inspect["vm"]["vmm_pid"].as_u64().unwrap_or(0), &id)?;
    // What `nothing_left_of` looks for does find a live pod's supervisor (forked from the
    // CLI, it carries the CLI's command line, not the pod's id).
    let supervisor = inspect["vm"]["supervisor_pid"].as_u64().unwrap_or(0) as u32;
    let holders = processes_holding(&id);
    if !holders.iter().any(|(pid, _)| *pid == supervisor) {
        return Err(format!(
            "the supervisor ({supervisor}) is not among the processes holding files of pod \
             {id}: {holders:?}"
        )
        .into());
    }
    // stop: SIGTERM ends the container (143), or SIGKILL after the 2 s grace period (137)
    // when its PID 1 ignores SIGTERM.
    let start = Instant::now();
    pods.ok(&["stop", "-t", "2", "w1"])?;
    let took = start.elapsed();
    if took > Duration::from_secs(15) {
        return Err(format!("stop -t 2 took {took:?}").into());
    }
    let status = pods.status_of("w1")?;
    let code = if status.starts_with("Exited (143)") {
        "143"
    } else if status.starts_with("Exited (137)") {
        "137"
    } else {
        return Err(format!("after stop, ps -a shows {status:?}, not Exited (143 or 137)").into());
    };
    // logs -f ended with the pod.
    let deadline = Instant::now() + Duration::from_secs(5);
    while follow.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = follow.kill();
            return Err("logs -f did not end when the pod stopped".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = pods.ok(&["wait", "w1"])?;
    if out.trim() != code {
        return Err(format!("wait printed {out:?}, ps said {status:?}").into());
    }
    pods.ok(&["rm", "w1"])?;
    pods.nothing_left_of(&id)?;
    let cgroup = Path::new(VMM_CGROUP_SLICE).join(format!("pod-{id}"));
    if cgroup.exists() {
        return Err(format!("the pod's cgroup {} is left", cgroup.display()).into());
    }
    if pods.ps_entry("w1")?.is_some() {
        return Err("w1 is still listed after rm".into());
    }
    Ok(())
}

const VMM_CGROUP_SLICE: &str = "/sys/fs/cgroup/peapod.slice";

/// The jail of a running pod's VMM (vmm::jail, runtime::cgroup): not root, no capability
/// left, under its seccomp filters, PID 1 of its own PID namespace, a root and mount,
/// network, IPC and UTS namespaces of its own, in the pod's cgroup with guest RAM plus the
/// overhead as its memory limit.
fn vmm_is_jailed(pid: u64, id: &str) -> Result<(), Failed> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(proc.join("status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let uids = field("Uid");
    if uids.is_empty() || uids.contains(&"0") {
        return Err(format!("the VMM runs as uid {uids:?}: {status}").into());
    }
    if field("Gid").contains(&"0") {
        return Err(format!("the VMM runs with gid 0: {status}").into());
    }
    for caps in ["CapPrm", "CapEff", "CapBnd"] {
        if field(caps) != ["0000000000000000"] {
            return Err(format!("the VMM holds capabilities ({caps}): {status}").into());
        }
    }
    if field("Seccomp") != ["2"] || field("NoNewPrivs") != ["1"] {
        return Err(format!("the VMM is not under a seccomp filter: {status}").into());
    }
    if field("NSpid").last() != Some(&"1") {
        return Err(format!("the VMM is not PID 1 of a PID namespace of its own: {status}").into());
    }
    for ns in ["mnt", "net", "ipc", "uts", "pid"] {
        let vmm = std::fs::read_link(proc.join("ns").join(ns))?;
        let ours = std::fs::read_link(Path::new("/proc/self/ns").join(ns))?;
        if vmm == ours {
            return Err(format!("the VMM shares our {ns} namespace ({vmm:?})").into());
        }
    }
    use std::os::unix::fs::MetadataExt;
    let (root, host) = (
        std::fs::metadata(proc.join("root"))?,
        std::fs::metadata("/")?,
    );
    if (root.dev(), root.ino()) == (host.dev(), host.ino()) {
        return Err("the VMM's root is the host's".into());
    }
    if std::fs::read_dir(proc.join("root"))?.count() != 1 {
        return Err(format!(
            "the VMM's root holds more than the directory of its socket: {:?}",
            std::fs::read_dir(proc.join("root"))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Vec<_>>()
        )
        .into());
    }
    let cgroup = std::fs::read_to_string(proc.join("cgroup"))?;
    let expected = format!("0::/peapod.slice/pod-{id}/vmm");
    if cgroup.trim() != expected {
        return Err(format!("the VMM's cgroup is {cgroup:?}, not {expected}").into());
    }
    let max = std::fs::read_to_string(
        Path::new(VMM_CGROUP_SLICE).join(format!("pod-{id}/vmm/memory.max")),
    )?;
    let want = (peapod::vmm::builder::DEFAULT_MEMORY_MIB << 20)
        + peapod::runtime::cgroup::VMM_MEMORY_OVERHEAD;
    if max.trim() != want.to_string() {
        return Err(format!("the VMM's memory.max is {max:?}, not {want}").into());
    }
    Ok(())
}

/// SIGKILL to a supervisor: its VMM goes within 2 s, ps shows Failed, rm -f cleans up.
/// SIGKILL to a foreground `run`'s CLI: the pod goes on (as docker's does).
fn killed_processes() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let id = pods.ok(&["run", "-d", "--name", "k1", IMAGE, "sleep", "600"])?;
    let id = id.trim().to_string();
    pods.wait_status("k1", "Up", Duration::from_secs(10))?;
    let inspect = pods.inspect("k1")?;
    let supervisor = inspect["vm"]["supervisor_pid"]
        .as_u64()
        .ok_or("inspect has no supervisor pid")?;
    let vmm = inspect["vm"]["vmm_pid"]
        .as_u64()
        .ok_or("inspect has no VMM pid")?;
    if !pid_alive(vmm) {
        return Err(format!("the VMM {vmm} is not running").into());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while pid_alive(vmm) {
        if Instant::now() > deadline {
            return Err(format!("the VMM {vmm} outlived its supervisor by 2 s").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = pods.status_of("k1")?;
    if status != "Failed" {
        return Err(format!("ps shows {status:?} for a pod whose supervisor died").into());
    }
    let out = pods.run(&["rm", "k1"])?;
    check(
        out.status.code() == Some(0),
        "rm of a failed pod (nothing runs it) works without -f",
        &out,
    )?;
    pods.nothing_left_of(&id)?;

    // A foreground run whose CLI is killed: the pod keeps running under its supervisor.
    let mut cli = pods
        .command(&["run", "--name", "fg", IMAGE, "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    pods.wait_status("fg", "Up", Duration::from_secs(30))?;
    cli.kill()?;
    cli.wait()?;
    std::thread::sleep(Duration::from_millis(500));
    pods.wait_status("fg", "Up", Duration::from_secs(1))?;
    let fg_id = pods.inspect("fg")?["id"]
        .as_str()
        .ok_or("no id")?
        .to_string();
    let out = pods.run(&["rm", "fg"])?;
    check(
        out.status.code() == Some(125) && String::from_utf8_lossy(&out.stderr).contains("rm -f"),
        "rm of a running pod is refused, naming rm -f",
        &out,
    )?;
    pods.ok(&["rm", "-f", "fg"])?;
    pods.nothing_left_of(&fg_id)
}

/// 10 detached pods started at once all run; two runs with one name: exactly one wins.
fn ten_in_parallel() -> Result<(), Failed> {
    let pods = Pods::new()?;
    // Make the image's block image once, so the pods start from the cache.
    pods.ok(&["run", "--rm", IMAGE, "true"])?;

    // Two runs with one name at once: exactly one wins.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            pods.command(&[
                "run", "-d", "--memory", "96m", "--name", "same", IMAGE, "sleep", "600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        })
        .collect::<Result<_, _>>()?;
    let outs: Vec<Output> = racers
        .into_iter()
        .map(|c| c.wait_with_output())
        .collect::<Result<_, _>>()?;
    let winners = outs.iter().filter(|o| o.status.success()).count();
    let in_use = outs.iter().any(|o| {
        o.status.code() == Some(125)
            && String::from_utf8_lossy(&o.stderr).contains("name same is in use")
    });
    if winners != 1 || !in_use {
        return Err(format!(
            "two runs named `same`: {winners} won; outputs: {:?}",
            outs.iter()
                .map(|o| (
                    o.status.code(),
                    String::from_utf8_lossy(&o.stderr).into_owned()
                ))
                .collect::<Vec<_>>()
        )
        .into());
    }
    pods.ok(&["rm", "-f", "same"])?;

    // Ten pods started at once; each `run -d` returns once its container runs. They are
    // removed as soon as `ps` has shown them all. In the emulated test bed four: ten guests
    // ticking at 250 Hz at once crash its L1 more often than not (kernel panics and soft
    // lockups in its KVM; see README), which says nothing about peapod.
    let n: usize = if std::env::var_os("PEAPOD_IN_MACHINE").is_some() {
        println!("e2e: pods_ten_in_parallel: 4 pods in the emulated test bed (10 crash its L1)");
        4
    } else {
        10
    };
    let children: Vec<_> = (0..n)
        .map(|i| {
            pods.command(&[
                "run",
                "-d",
                "--memory",
                "96m",
                "--name",
                &format!("p{i}"),
                IMAGE,
                "sleep",
                "600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut outcomes = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        outcomes.push((i, child.wait_with_output()?));
    }
    let running: Vec<serde_json::Value> = pods
        .ok(&["ps", "--format", "json"])?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let ids: Vec<String> = running
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    let all = pods.ok(&["ps", "-aq"])?;
    let mut rm = vec!["rm", "-f"];
    rm.extend(all.split_whitespace());
    let removed = pods.run(&rm)?;
    for (i, out) in &outcomes {
        check(out.status.success(), &format!("pod p{i} starts"), out)?;
    }
    let up = running
        .iter()
        .filter(|v| {
            v["status_text"]
                .as_str()
                .is_some_and(|s| s.starts_with("Up"))
        })
        .count();
    if ids.len() != n || up != n {
        return Err(format!(
            "ps lists {} pods, {up} of them Up, not {n}: {running:?}",
            ids.len()
        )
        .into());
    }
    check(removed.status.success(), "rm -f of the pods", &removed)?;
    for id in &ids {
        pods.nothing_left_of(id)?;
    }
    let listed = pods.ok(&["ps", "-aq"])?;
    if !listed.trim().is_empty() {
        return Err(format!("pods left after rm -f: {listed}").into());
    }
    Ok(())
}

/// Writes the record and final state of an exited pod with a chosen id, as a pod that ran
/// before a host reboot leaves them in the store.
fn write_exited_pod(dirs: &peapod::pod::PodDirs, id: &str, name: &str) -> Result<(), Failed> {
    use peapod::pod::{PodRecord, PodSpec, PodState, PodStatus, VmSize, write_json_atomic};
    let id: peapod::pod::PodId = id.parse()?;
    let now = std::time::SystemTime::now();
    std::fs::create_dir_all(dirs.store_dir(&id))?;
    let spec = PodSpec {
        name: name.into(),
        hostname: name.into(),
        vm: VmSize {
            cpus: 1,
            memory_mib: 128,
        },
        containers: Vec::new(),
        auto_remove: false,
        init_containers: Vec::new(),
        restart_policy: Default::default(),
        termination_grace_period_s: None,
        volumes: Vec::new(),
        labels: Default::default(),
        annotations: Default::default(),
        network: Default::default(),
        runtime: Default::default(),
    };
    write_json_atomic(
        &dirs.record_path(&id),
        &PodRecord {
            id: id.clone(),
            name: name.into(),
            created_at: now,
            spec,
        },
    )?;
    write_json_atomic(
        &dirs.stored_state_path(&id),
        &PodState {
            id,
            name: name.into(),
            status: PodStatus::Exited { code: 0 },
            created_at: now,
            started_at: Some(now),
            finished_at: Some(now),
            supervisor_pid: None,
            vmm_pid: None,
            containers: Vec::new(),
            error: None,
            network: None,
        },
    )?;
    Ok(())
}

/// Bad input: a clear error, exit status 125, and no pod, no directory made.
fn bad_input_creates_nothing() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--memory", "0", IMAGE, "true"], "--memory"),
        (&["run", "--cpus", "1000", IMAGE, "true"], "--cpus"),
        (&["run", "--name", "a/b", IMAGE, "true"], "a/b"),
        (&["run", "--name", "..", IMAGE, "true"], ".."),
        (
            &["run", "-v", "/tmp:/data", IMAGE, "true"],
            "not supported yet",
        ),
        (
            &["run", "-v", "/no/such/dir:/data:ro", IMAGE, "true"],
            "/no/such/dir",
        ),
        (&["run", "-p", "70000:80", IMAGE, "true"], "70000"),
        (&["run", "-p", "8080:0", IMAGE, "true"], "give 1 to 65535"),
        (
            &["run", "-p", "80", IMAGE, "true"],
            "HOSTPORT:CONTAINERPORT",
        ),
        (&["run", "-p", "8080:80/sctp", IMAGE, "true"], "sctp"),
        (
            &["run", "-p", "8080:80", "-p", "8080:81", IMAGE, "true"],
            "published twice",
        ),
        (
            &["run", "--network", "none", "-p", "8080:80", IMAGE, "true"],
            "need a network",
        ),
        (&["run", "--network", "host", IMAGE, "true"], "cannot share"),
        (&["logs", "nosuchpod"], "nosuchpod"),
        (&["stop", "nosuchpod"], "nosuchpod"),
        (&["exec", "nosuchpod", "--", "true"], "nosuchpod"),
        (&["kill", "-s", "NOPE", "nosuchpod"], "NOPE"),
    ];
    for (args, named) in cases {
        let out = pods.run(args)?;
        check(
            out.status.code() == Some(125) && String::from_utf8_lossy(&out.stderr).contains(named),
            &format!("peapod {args:?} fails with 125 naming {named}"),
            &out,
        )?;
    }
    // Two pods whose ids share a prefix: the prefix is ambiguous, the longer one is not.
    let dirs = peapod::pod::PodDirs::new(pods.run_dir(), pods.root().join("pods"));
    let ids = [
        format!("abc1{}", "0".repeat(60)),
        format!("abc2{}", "0".repeat(60)),
    ];
    for (n, id) in ids.iter().enumerate() {
        write_exited_pod(&dirs, id, &format!("old{n}"))?;
    }
    // After a reboot (no run directory, the store kept) `ps -a` lists them.
    let listed = pods.ok(&["ps", "-a"])?;
    if !listed.contains("old0") || !listed.contains("old1") || !listed.contains("Exited (0)") {
        return Err(format!("ps -a after a reboot: {listed}").into());
    }
    let out = pods.run(&["inspect", "abc"])?;
    check(
        out.status.code() == Some(125) && String::from_utf8_lossy(&out.stderr).contains("abc"),
        "an ambiguous id prefix is refused",
        &out,
    )?;
    let out = pods.run(&["inspect", "abc2"])?;
    check(
        out.status.success(),
        "a unique id prefix names its pod",
        &out,
    )?;
    pods.ok(&["rm", "old0", "old1"])?;
    let left: Vec<_> = std::fs::read_dir(pods.root().join("pods"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    if !left.is_empty() {
        return Err(format!("bad input left pods behind: {left:?}").into());
    }
    Ok(())
}
