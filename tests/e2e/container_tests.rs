//! The container runtime end to end (`--runtime container`): the same pods, CLI, logs, exec,
//! state and networking as pod VMs, with the containers on this machine's kernel. They run
//! in the L1 beside pod VMs, so that each test can set the two models side by side: the
//! container sees the L1's kernel, the pod VM its own.

use std::path::Path;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::kube_tests::write_yaml;
use crate::pod_tests::Pods;
use crate::support::{Case, Place, check};

pub fn cases() -> Vec<Case> {
    // They run where pod VMs run (hardware KVM, else the test bed's L1, which has cgroup v2);
    // a host with hardware KVM but without what the container runtime needs skips them.
    let kvm = |name, run| Case {
        name,
        place: Place::Kvm,
        run,
        skip_if: Some(container_runtime_missing),
    };
    vec![
        kvm(
            "container_runtime_sees_the_host_kernel_a_pod_vm_does_not",
            kernels_side_by_side,
        ),
        kvm(
            "container_runtime_detached_exec_logs_stop_rm",
            detached_lifecycle,
        ),
        kvm(
            "container_runtime_two_container_pod_shares_localhost_and_cleans_up",
            two_container_pod,
        ),
        kvm(
            "container_runtime_killed_supervisor_takes_its_containers",
            killed_supervisor,
        ),
        kvm(
            "bench_isolation_sets_the_two_models_apart",
            isolation_matrix,
        ),
        kvm("bench_models_fills_every_row_for_both_models", models_bench),
    ]
}

/// Why the container runtime cannot run here (not root, no cgroup v2), if it cannot.
fn container_runtime_missing() -> Option<String> {
    peapod::runtime::container::check_host()
        .err()
        .map(|e| e.to_string())
}

const IMAGE: &str = "peapod/busybox:latest";
const CGROUP_SLICE: &str = "/sys/fs/cgroup/peapod.slice";

/// Fails when anything of container-runtime pod `id` is on the machine: what
/// [`Pods::nothing_left_of`] checks, and its cgroup and network namespace.
fn nothing_left(pods: &Pods, id: &str) -> Result<(), Failed> {
    pods.nothing_left_of(id)?;
    let cgroup = Path::new(CGROUP_SLICE).join(format!("pod-{id}"));
    if cgroup.exists() {
        return Err(format!("the pod's cgroup {} is left", cgroup.display()).into());
    }
    let netns = Path::new("/run/netns").join(format!("peapod-{id}"));
    if netns.exists() {
        return Err(format!("the pod's network namespace {} is left", netns.display()).into());
    }
    Ok(())
}

/// `uname -r` in a container is the L1's; in a pod VM it is the guest kernel's. The
/// container's cgroup is its pod's, beneath peapod.slice.
fn kernels_side_by_side() -> Result<(), Failed> {
    let host = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    let containers = Pods::containers(false)?;
    let out = containers.ok(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "uname -r; cat /proc/self/cgroup; hostname",
    ])?;
    let mut lines = out.lines();
    let kernel = lines.next().unwrap_or("");
    if kernel != host {
        return Err(format!("the container saw kernel {kernel:?}, the host is {host:?}").into());
    }
    let cgroup = lines.next().unwrap_or("");
    if !cgroup.starts_with("0::/peapod.slice/pod-") || !cgroup.ends_with("/main") {
        return Err(format!("the container's cgroup is {cgroup:?}, not its pod's").into());
    }
    if lines.next() != Some("peapod") {
        return Err(format!("the container's hostname is not the pod's: {out}").into());
    }
    let vms = Pods::new()?;
    let guest = vms.ok(&["run", "--rm", IMAGE, "uname", "-r"])?;
    if guest.trim() == host || guest.trim().is_empty() {
        return Err(format!("the pod VM saw kernel {guest:?}, the host's is {host:?}").into());
    }
    // Both models drop to docker's capabilities; only the container on the host's kernel
    // gets docker's seccomp filter (the VM is the boundary, as in Kata's default); a
    // privileged container keeps every capability and no filter.
    let confinement = "grep -E '^(CapBnd|Seccomp|NoNewPrivs):' /proc/self/status | tr -d ' \\t'";
    let fields = |text: &str| -> Vec<String> { text.lines().map(str::to_string).collect() };
    let contained = fields(&containers.ok(&["run", "--rm", IMAGE, "sh", "-c", confinement])?);
    let in_vm = fields(&vms.ok(&["run", "--rm", IMAGE, "sh", "-c", confinement])?);
    let privileged = fields(&containers.ok(&[
        "run",
        "--rm",
        "--privileged",
        IMAGE,
        "sh",
        "-c",
        confinement,
    ])?);
    let want = |bnd: &str, nnp: &str, seccomp: &str| {
        vec![
            format!("NoNewPrivs:{nnp}"),
            format!("Seccomp:{seccomp}"),
            format!("CapBnd:{bnd}"),
        ]
    };
    let sorted = |mut v: Vec<String>| {
        v.sort_by_key(|l| match l.split(':').next() {
            Some("NoNewPrivs") => 0,
            Some("Seccomp") => 1,
            _ => 2,
        });
        v
    };
    let docker = "00000000a80425fb";
    if sorted(contained.clone()) != want(docker, "1", "2") {
        return Err(format!("a default container is confined as {contained:?}").into());
    }
    if sorted(in_vm.clone()) != want(docker, "1", "0") {
        return Err(format!("a pod VM's container is confined as {in_vm:?}").into());
    }
    if privileged
        .iter()
        .any(|l| l == &format!("CapBnd:{docker}") || l == "Seccomp:2")
    {
        return Err(format!("a privileged container is confined as {privileged:?}").into());
    }
    // Exit codes come through as with a VM.
    let out = containers.run(&["run", "--rm", IMAGE, "sh", "-c", "exit 7"])?;
    check(
        out.status.code() == Some(7),
        "run --rm --runtime container exits with the container's code",
        &out,
    )
}

/// A detached host pod on the default network with a published port: ps, exec, logs, the
/// port answering, stop, rm, and nothing left.
fn detached_lifecycle() -> Result<(), Failed> {
    let pods = Pods::containers(true)?;
    let id = pods.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1:18090:80",
        IMAGE,
        "sh",
        "-c",
        "echo served > /tmp/index.html; echo started; exec httpd -f -p 80 -h /tmp",
    ])?;
    let id = id.trim().to_string();
    pods.wait_status("web", "Up", Duration::from_secs(20))?;
    if pods.inspect("web")?["spec"]["runtime"] != "container" {
        return Err("inspect does not say the pod runs in the container runtime".into());
    }
    // exec runs in the container's root (its file), UTS namespace and PID namespace.
    let exec = pods.ok(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo $((6 * 7)); hostname; cat /tmp/index.html; cat /proc/1/cmdline | tr '\\0' ' '",
    ])?;
    let lines: Vec<&str> = exec.lines().collect();
    if lines.len() < 4
        || lines[..3] != ["42", "web", "served"]
        || !lines[3].contains("container-init")
    {
        return Err(format!("exec printed {exec:?}").into());
    }
    let body = http_body("127.0.0.1:18090", Duration::from_secs(20))?;
    if body.trim() != "served" {
        return Err(format!("the published port answered {body:?}").into());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pods.ok(&["logs", "web"])?.contains("started") {
        if Instant::now() > deadline {
            return Err("logs never showed the container's output".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    pods.ok(&["stop", "-t", "2", "web"])?;
    let status = pods.status_of("web")?;
    if !status.starts_with("Exited") {
        return Err(format!("after stop the pod is {status:?}").into());
    }
    // The stopped pod holds no process, cgroup, mount or namespace; rm removes the rest.
    let cgroup = Path::new(CGROUP_SLICE).join(format!("pod-{id}"));
    if cgroup.exists() {
        return Err("a stopped pod still has its cgroup".into());
    }
    pods.ok(&["rm", "web"])?;
    nothing_left(&pods, &id)
}

/// GET / over HTTP/1.0, retried until it answers 200; the body.
fn http_body(addr: &str, timeout: Duration) -> Result<String, Failed> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        })();
        match attempt {
            Ok(r) if r.contains(" 200 ") => {
                return Ok(r.split_once("\r\n\r\n").map_or("", |(_, b)| b).into());
            }
            other if Instant::now() > deadline => {
                return Err(format!("GET http://{addr}/ never answered 200: {other:?}").into());
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A two-container YAML pod with the runtime annotation: the containers share the pod's
/// network namespace (one reaches the other on localhost) and hostname; the pod ends with
/// its containers and leaves nothing after rm.
fn two_container_pod() -> Result<(), Failed> {
    let pods = Pods::containers(false)?;
    let yaml = write_yaml(
        &pods,
        "duo.yaml",
        "apiVersion: v1
kind: Pod
metadata:
  name: duo
  annotations:
    peapod.dev/runtime: container
spec:
  restartPolicy: Never
  containers:
  - name: server
    image: peapod/busybox:latest
    command: [sh, -c, 'echo pong > /tmp/ping; timeout 30 httpd -f -p 8080 -h /tmp']
  - name: client
    image: peapod/busybox:latest
    command: [sh, -c, 'for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ping && break; sleep 0.2; done; hostname']
",
    )?;
    // The flag says vm; the annotation wins.
    let out = pods.ok(&["pod", "apply", "--runtime", "vm", "-f", &yaml])?;
    let id = out
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("pod apply printed {out:?}"))?
        .to_string();
    if pods.inspect("duo")?["spec"]["runtime"] != "container" {
        return Err("the runtime annotation was not taken".into());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = pods.ok(&["logs", "duo", "-c", "client"])?;
        if logs.contains("pong") && logs.contains("duo") {
            break;
        }
        if Instant::now() > deadline {
            return Err(
                format!("the client never reached the server on localhost: {logs:?}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    pods.ok(&["rm", "-f", "duo"])?;
    nothing_left(&pods, &id)
}

/// SIGKILL to a host pod's supervisor: its host agent ends the pod (PR_SET_PDEATHSIG), so
/// the container's processes go with it; ps shows Failed and rm leaves nothing.
fn killed_supervisor() -> Result<(), Failed> {
    let pods = Pods::containers(false)?;
    let id = pods.ok(&["run", "-d", "--name", "k", IMAGE, "sleep", "6543"])?;
    let id = id.trim().to_string();
    pods.wait_status("k", "Up", Duration::from_secs(20))?;
    let supervisor = pods.inspect("k")?["vm"]["supervisor_pid"]
        .as_u64()
        .ok_or("inspect has no supervisor pid")?;
    let sleeping = || crate::pod_tests::processes_naming("sleep 6543");
    if sleeping().is_empty() {
        return Err("the container's sleep is not running".into());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sleeping().is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "the container outlived its supervisor by 5 s: {:?}",
                sleeping()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = pods.status_of("k")?;
    if status != "Failed" {
        return Err(format!("ps shows {status:?} for a pod whose supervisor died").into());
    }
    pods.ok(&["rm", "k"])?;
    nothing_left(&pods, &id)
}

/// `peapod bench isolation --output json` in this machine: the container sees the host's
/// kernel and its own seccomp filter, the pod VM sees neither; the release_agent pattern
/// works from a privileged container on the host's kernel, and from a privileged pod VM only
/// on the guest's.
fn isolation_matrix() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let out = pods.ok(&["bench", "isolation", "--output", "json"])?;
    let json: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("bench isolation JSON ({e}): {out}"))?;
    let columns = json["columns"].as_array().ok_or("no columns")?;
    let probe = |model: &str, privilege: &str, name: &str| -> Result<(String, String), Failed> {
        let column = columns
            .iter()
            .find(|c| c["model"] == model && c["privilege"] == privilege)
            .ok_or_else(|| format!("no {model} {privilege} column: {out}"))?;
        let line = column["probes"]
            .as_array()
            .and_then(|p| p.iter().find(|l| l["probe"] == name))
            .ok_or_else(|| format!("{model} {privilege}: no {name} probe: {column}"))?;
        let text = |k: &str| line[k].as_str().unwrap_or("").to_string();
        Ok((text("outcome"), text("evidence")))
    };
    let release = |e: &str| e.split(';').next().unwrap_or("").to_string();
    let host_kernel = release(&probe("host", "default", "kernel")?.1);
    let container_kernel = release(&probe("container", "default", "kernel")?.1);
    let vm_kernel = release(&probe("vm", "default", "kernel")?.1);
    if container_kernel != host_kernel || vm_kernel == host_kernel || host_kernel.is_empty() {
        return Err(format!(
            "kernels: host {host_kernel:?}, container {container_kernel:?}, VM {vm_kernel:?}"
        )
        .into());
    }
    let container_seccomp = probe("container", "default", "seccomp")?;
    let vm_seccomp = probe("vm", "default", "seccomp")?;
    if container_seccomp.0 != "confined" || vm_seccomp.0 == "confined" {
        return Err(format!("seccomp: container {container_seccomp:?}, VM {vm_seccomp:?}").into());
    }
    for (model, want) in [("container", "refused"), ("vm", "refused")] {
        let got = probe(model, "default", "release_agent")?;
        if got.0 != want {
            return Err(format!("release_agent in a default {model}: {got:?}").into());
        }
    }
    // Privileged: the pattern gets through in both, and only the container is on the host's
    // kernel.
    let container_privileged = probe("container", "privileged", "release_agent")?;
    let vm_privileged = probe("vm", "privileged", "release_agent")?;
    let vm_privileged_kernel = release(&probe("vm", "privileged", "kernel")?.1);
    if container_privileged.0 != "allowed"
        || vm_privileged.0 != "allowed"
        || vm_privileged_kernel == host_kernel
    {
        return Err(format!(
            "privileged release_agent: container {container_privileged:?}, VM \
             {vm_privileged:?} on {vm_privileged_kernel:?}"
        )
        .into());
    }
    Ok(())
}

/// `peapod bench models` (short: one run, two pods, every part but the network's, whose pod
/// VMs with busy NICs make the emulated L1 panic) fills every row for both models; a cell
/// only a VM has (the VMM's memory) says why for the container.
fn models_bench() -> Result<(), Failed> {
    use peapod::bench::models::{CONTAINER, VM};
    use peapod::bench::report::{Outcome, Report};
    let pods = Pods::new()?;
    let out = pods.ok(&[
        "bench",
        "models",
        "--runs",
        "1",
        "--pods",
        "2",
        "--only",
        "start,memory,syscalls,fileio,density,surface,neighbour",
        "--output",
        "json",
    ])?;
    let report = Report::from_json(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    if !report
        .metrics
        .iter()
        .any(|m| m.name.starts_with("neighbour:"))
    {
        return Err(format!("no neighbour rows: {out}").into());
    }
    if report.metrics.len() < 18 {
        return Err(format!("only {} rows: {out}", report.metrics.len()).into());
    }
    for metric in &report.metrics {
        let vm_only = metric.name.contains("VMM") || metric.name.contains("guest RAM");
        for cell in &metric.cells {
            let must_measure = cell.subject == VM || (cell.subject == CONTAINER && !vm_only);
            match &cell.outcome {
                Outcome::Measured(samples) if samples.len() == 1 => {}
                Outcome::NotRun { reason } if !must_measure && !reason.trim().is_empty() => {}
                other => {
                    return Err(format!("{} / {}: {other:?}", metric.name, cell.subject).into());
                }
            }
        }
    }
    Ok(())
}
