//! Declarative pods: `peapod pod apply` of Kubernetes Pod and Secret YAML (init containers,
//! two containers sharing an emptyDir, secrets as env and files, restart policies), and
//! `peapod secret`. The shared helpers are the pod tests' ([`crate::pod_tests::Pods`]).

use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::pod_tests::{Pods, processes_naming};
use crate::support::{Case, Place, check};

pub fn cases() -> Vec<Case> {
    let kvm = |name, run| Case {
        name,
        place: Place::Kvm,
        run,
        skip_if: None,
    };
    vec![
        kvm(
            "kube_pod_with_init_emptydir_and_secret",
            pod_with_init_emptydir_and_secret,
        ),
        kvm("kube_restart_policies", restart_policies),
        Case {
            name: "kube_bad_documents_create_nothing",
            place: Place::Host,
            run: bad_documents_create_nothing,
            skip_if: None,
        },
    ]
}

/// A secret value that must appear nowhere on the host but where the user asked for it.
const SECRET_VALUE: &str = "s3cr3t-e2e-value-7c1f";

pub(crate) fn write_yaml(pods: &Pods, name: &str, text: &str) -> Result<String, Failed> {
    let path = pods.root().with_file_name(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// Waits until `logs POD -c C` contains `needle`; returns the logs.
pub(crate) fn wait_logs(
    pods: &Pods,
    pod: &str,
    container: &str,
    needle: &str,
) -> Result<String, Failed> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = pods.ok(&["logs", pod, "-c", container])?;
        if logs.contains(needle) {
            return Ok(logs);
        }
        if Instant::now() > deadline {
            return Err(
                format!("logs of {pod}/{container} never showed {needle:?}: {logs}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn pod_with_init_emptydir_and_secret() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  password: {SECRET_VALUE}
---
apiVersion: v1
kind: Pod
metadata:
  name: shop
  creationTimestamp: null
spec:
  dnsPolicy: ClusterFirst
  restartPolicy: Never
  volumes:
    - name: shared
      emptyDir: {{}}
    - name: creds
      secret:
        secretName: creds
  initContainers:
    - name: prepare
      image: peapod/busybox:latest
      command: ["sh", "-c", "echo prepared > /shared/init"]
      volumeMounts:
        - name: shared
          mountPath: /shared
  containers:
    - name: writer
      image: peapod/busybox:latest
      command: ["sh", "-c", "cat /shared/init > /shared/msg; echo from-writer >> /shared/msg; sleep 600"]
      volumeMounts:
        - name: shared
          mountPath: /shared
    - name: reader
      image: peapod/busybox:latest
      command:
        - sh
        - -c
        - |
          while [ ! -s /shared/msg ]; do sleep 0.2; done
          sleep 0.5
          cat /shared/msg
          [ "$PASSWORD" = "$(cat /etc/creds/password)" ] && echo env-and-file-agree
          [ ${{#PASSWORD}} = {len} ] && echo env-has-the-value
          echo mode $(stat -c %a /etc/creds/password)
          sleep 600
      env:
        - name: PASSWORD
          valueFrom:
            secretKeyRef:
              name: creds
              key: password
      resources: {{}}
      terminationMessagePath: /dev/termination-log
      volumeMounts:
        - name: shared
          mountPath: /shared
          readOnly: true
        - name: creds
          mountPath: /etc/creds
          readOnly: true
status: {{}}
"#,
        len = SECRET_VALUE.len()
    );
    let file = write_yaml(&pods, "shop.yaml", &yaml)?;
    let out = pods.run(&["pod", "apply", "-f", &file])?;
    check(out.status.success(), "pod apply succeeds", &out)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        stderr.matches("warning").count() == 1
            && stderr.contains("dnsPolicy")
            && stderr.contains("creationTimestamp"),
        "the harmless fields are listed once, in one warning",
        &out,
    )?;
    pods.wait_status("shop", "Up", Duration::from_secs(30))?;
    let logs = wait_logs(&pods, "shop", "reader", "mode")?;
    for want in [
        "prepared",
        "from-writer",
        "env-and-file-agree",
        "env-has-the-value",
        "mode 400",
    ] {
        if !logs.contains(want) {
            return Err(format!("reader's logs lack {want:?}: {logs}").into());
        }
    }
    // The secret is nowhere on the host: not in ps, inspect, any process's argv or
    // environment, or peapod's own files for the pod (logs of its supervisor and VM).
    let ps = pods.ok(&["ps", "-a", "--format", "json"])?;
    let inspect = pods.ok(&["inspect", "shop"])?;
    for (what, text) in [("ps", &ps), ("inspect", &inspect)] {
        if text.contains(SECRET_VALUE) {
            return Err(format!("{what} shows the secret").into());
        }
    }
    let leaks = processes_naming(SECRET_VALUE);
    if !leaks.is_empty() {
        return Err(format!("processes carry the secret in argv: {leaks:?}").into());
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && String::from_utf8_lossy(&env).contains(SECRET_VALUE)
        {
            return Err(format!(
                "{} has the secret in its environment",
                entry.path().display()
            )
            .into());
        }
    }
    for dir in [pods.run_dir(), pods.root().join("pods")] {
        for file in walk(&dir) {
            if file.extension().is_some_and(|e| e == "sock") {
                continue;
            }
            let text = std::fs::read(&file).unwrap_or_default();
            let is_container_log = file.to_string_lossy().contains("/logs/");
            if !is_container_log && String::from_utf8_lossy(&text).contains(SECRET_VALUE) {
                return Err(format!("{} holds the secret", file.display()).into());
            }
        }
    }
    // A secret a running pod uses cannot be removed.
    let out = pods.run(&["secret", "rm", "creds"])?;
    check(
        out.status.code() == Some(125) && String::from_utf8_lossy(&out.stderr).contains("shop"),
        "secret rm of a secret a running pod uses is refused, naming the pod",
        &out,
    )?;
    let id = pods.inspect("shop")?["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    pods.ok(&["rm", "-f", "shop"])?;
    pods.nothing_left_of(&id)?;
    pods.ok(&["secret", "rm", "creds"])?;
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn restart_policies() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let yaml = r#"apiVersion: v1
kind: Pod
metadata:
  name: flaky
spec:
  restartPolicy: OnFailure
  volumes:
    - name: data
      emptyDir: {}
  containers:
    - name: main
      image: peapod/busybox:latest
      command: ["sh", "-c", "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run $n; [ $n -ge 3 ]"]
      volumeMounts:
        - name: data
          mountPath: /data
---
apiVersion: v1
kind: Pod
metadata:
  name: forever
spec:
  restartPolicy: Always
  containers:
    - name: main
      image: peapod/busybox:latest
      command: ["sleep", "600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: once
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: peapod/busybox:latest
      command: ["sh", "-c", "exit 3"]
"#;
    let file = write_yaml(&pods, "restarts.yaml", yaml)?;
    let out = pods
        .command(&["pod", "apply", "-f", &file])
        .env("PEAPOD_RESTART_BACKOFF_MS", "200")
        .output()?;
    check(out.status.success(), "pod apply of three pods", &out)?;

    // OnFailure: fails twice, then succeeds: 2 restarts, Exited (0).
    pods.wait_status("flaky", "Exited (0)", Duration::from_secs(60))?;
    let flaky = pods.ps_entry("flaky")?.ok_or("flaky is not listed")?;
    if flaky["restarts"] != 2 {
        return Err(format!("flaky: {flaky}").into());
    }
    let logs = pods.ok(&["logs", "flaky"])?;
    if !(logs.contains("run 1") && logs.contains("run 2") && logs.contains("run 3")) {
        return Err(format!("flaky's logs: {logs}").into());
    }
    // Always: a container killed from outside comes back in the same VM.
    pods.wait_status("forever", "Up", Duration::from_secs(30))?;
    let vmm = pods.inspect("forever")?["vm"]["vmm_pid"].as_u64();
    pods.ok(&["kill", "-s", "KILL", "forever"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entry = pods.ps_entry("forever")?.ok_or("forever is not listed")?;
        if entry["restarts"] == 1
            && entry["status_text"]
                .as_str()
                .is_some_and(|s| s.starts_with("Up"))
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("forever was not restarted: {entry}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if pods.inspect("forever")?["vm"]["vmm_pid"].as_u64() != vmm {
        return Err("the restart rebooted the VM".into());
    }
    // Never: stays Exited (3).
    pods.wait_status("once", "Exited (3)", Duration::from_secs(30))?;
    if pods.ps_entry("once")?.ok_or("once is not listed")?["restarts"] != 0 {
        return Err("once restarted".into());
    }
    // `peapod run --restart on-failure:2`: two restarts, then Exited with the last code.
    let out = pods
        .command(&[
            "run",
            "-d",
            "--name",
            "twice",
            "--restart",
            "on-failure:2",
            "peapod/busybox:latest",
            "sh",
            "-c",
            "exit 4",
        ])
        .env("PEAPOD_RESTART_BACKOFF_MS", "200")
        .output()?;
    check(out.status.success(), "run -d --restart on-failure:2", &out)?;
    pods.wait_status("twice", "Exited (4)", Duration::from_secs(60))?;
    let twice = pods.ps_entry("twice")?.ok_or("twice is not listed")?;
    if twice["restarts"] != 2 {
        return Err(format!("on-failure:2 restarted other than twice: {twice}").into());
    }
    // `peapod run --secret`: the keys as files under /run/secrets/NAME.
    let mut create = pods
        .command(&["secret", "create", "runsec", "--from-file", "key=-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = create.stdin.take().ok_or("no stdin")?;
        stdin.write_all(SECRET_VALUE.as_bytes())?;
    }
    let out = create.wait_with_output()?;
    check(out.status.success(), "secret create from stdin", &out)?;
    let out = pods
        .command(&[
            "run",
            "--rm",
            "--secret",
            "runsec",
            "-e",
            "EXPECTED",
            "peapod/busybox:latest",
            "sh",
            "-c",
            "test \"$(cat /run/secrets/runsec/key)\" = \"$EXPECTED\" && echo secret-file-ok",
        ])
        .env("EXPECTED", SECRET_VALUE)
        .output()?;
    check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("secret-file-ok"),
        "run --secret mounts the secret's keys as files",
        &out,
    )?;
    let all = pods.ok(&["ps", "-aq"])?;
    let mut rm = vec!["rm", "-f"];
    rm.extend(all.split_whitespace());
    pods.ok(&rm)?;
    Ok(())
}

/// Bad documents: each an error naming the field, exit 125, no pod and no secret left.
fn bad_documents_create_nothing() -> Result<(), Failed> {
    let pods = Pods::new()?;
    let pod = |containers: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n{containers}"
        )
    };
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  k: v\n---\n";
    let cases: Vec<(String, &str)> = vec![
        (
            pod("  - name: a\n    image: x\n    comand: [sh]\n"),
            "did you mean command",
        ),
        (
            pod("  - name: a\n    image: x\n    livenessProbe: {}\n"),
            "livenessProbe: not supported",
        ),
        (
            pod("  - name: a\n    image: x\n  - name: a\n    image: y\n"),
            "containers[1].name",
        ),
        (
            pod(
                "  - name: a\n    image: x\n    resources:\n      limits:\n        memory: 12Gigs\n",
            ),
            "12Gigs",
        ),
        (pod("  - name: a\n"), "image"),
        (
            pod("  - name: a\n    image: x\n    ports:\n    - containerPort: 70000\n"),
            "containerPort",
        ),
        (
            format!(
                "{secret}{}",
                pod(
                    "  - name: a\n    image: x\n    env:\n    - name: P\n      valueFrom:\n        secretKeyRef: {name: s, key: nope}\n"
                )
            ),
            "nope",
        ),
        ("apiVersion: v2\nkind: Pod\n".into(), "apiVersion"),
        ("apiVersion: v1\nkind: Pod\nmetadata: [\n".into(), "line"),
    ];
    for (yaml, named) in &cases {
        let file = write_yaml(&pods, "bad.yaml", yaml)?;
        let out = pods.run(&["pod", "apply", "-f", &file])?;
        check(
            out.status.code() == Some(125) && String::from_utf8_lossy(&out.stderr).contains(named),
            &format!("a bad document fails with 125 naming {named:?}:\n{yaml}"),
            &out,
        )?;
    }
    let listed = pods.ok(&["ps", "-aq"])?;
    let secrets = pods.ok(&["secret", "ls"])?;
    if !listed.trim().is_empty() || secrets.lines().count() > 1 {
        return Err(format!("bad documents left pods {listed:?} or secrets {secrets:?}").into());
    }
    Ok(())
}
