//! Pod networking end to end: a pod's HTTP server reached through a published port on
//! 127.0.0.1 and by its pod IP from another pod, two containers of a pod on one localhost,
//! the guest's MTU and resolv.conf, egress to the host's bridge address, a taken host port
//! refused with nothing created, and a pod whose supervisor was SIGKILLed leaving no
//! namespace, veth, lease, NAT rule or port behind after `rm -f`.
//!
//! Traffic stays inside this machine: between pods, the `peapod0` bridge and loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::kube_tests::{wait_logs, write_yaml};
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
        kvm("net_published_port_pod_ip_mtu_dns_and_cleanup", web_pod),
        kvm("net_two_containers_share_localhost", two_containers),
    ]
}

const IMAGE: &str = "peapod/busybox:latest";
/// Host ports of these tests (the L1 is theirs; on a real host they must be free).
const WEB_PORT: u16 = 18080;
const DUO_PORT: u16 = 18081;
/// A resolver address the pod must get instead of a 127.0.0.53 stub (TEST-NET-1: never
/// contacted).
const UPSTREAM_DNS: &str = "192.0.2.53";

/// `GET /` over HTTP/1.0 on `addr`, retried until the server answers or `timeout` passes;
/// the response's body.
fn http_get(addr: &str, timeout: Duration) -> Result<String, Failed> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(r) if r.starts_with("HTTP/1.") && r.contains(" 200 ") => {
                return Ok(r
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b)
                    .unwrap_or("")
                    .into());
            }
            other => {
                if Instant::now() > deadline {
                    return Err(format!("GET http://{addr}/ never answered 200: {other:?}").into());
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

/// An HTTP server on every host address answering `body` to each request, on a thread.
fn serve_http(body: &'static str) -> Result<u16, Failed> {
    let listener = TcpListener::bind(("0.0.0.0", 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}

/// The MTU of interface `name` in the network namespace bound at `netns`.
fn mtu_in(netns: &Path, name: &str) -> Result<u32, Failed> {
    let link = peapod::netlink::netns::run_in(netns, || {
        peapod::netlink::Netlink::open().and_then(|mut nl| nl.link_by_name(name))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok(link.mtu)
}

/// Points the L1's resolver at a systemd-resolved stub whose upstream is [`UPSTREAM_DNS`], as
/// a desktop or cloud host has it. Only inside the disposable L1.
fn fake_resolved_stub() -> Result<bool, Failed> {
    if std::env::var_os("PEAPOD_IN_MACHINE").is_none() {
        return Ok(false);
    }
    std::fs::write("/etc/resolv.conf", "nameserver 127.0.0.53\noptions edns0\n")?;
    std::fs::create_dir_all("/run/systemd/resolve")?;
    std::fs::write(
        "/run/systemd/resolve/resolv.conf",
        format!("nameserver {UPSTREAM_DNS}\n"),
    )?;
    Ok(true)
}

fn web_pod() -> Result<(), Failed> {
    let pods = Pods::networked()?;
    let faked_dns = fake_resolved_stub()?;
    let publish = format!("127.0.0.1:{WEB_PORT}:80");
    pods.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-a-pod > /www/index.html && exec httpd -f -p 80 -h /www",
    ])?;

    // The published port, on the host's loopback, with a real HTTP request.
    let body = http_get(&format!("127.0.0.1:{WEB_PORT}"), Duration::from_secs(60))?;
    if body.trim() != "hello-from-a-pod" {
        return Err(format!("GET via 127.0.0.1:{WEB_PORT} gave {body:?}").into());
    }
    let port = pods.ok(&["port", "web"])?;
    if port.trim() != format!("80/tcp -> 127.0.0.1:{WEB_PORT}") {
        return Err(format!("peapod port web printed {port:?}").into());
    }
    let ps = pods.ps_entry("web")?.ok_or("ps does not list web")?;
    if ps["ports"][0] != format!("127.0.0.1:{WEB_PORT}->80/tcp") || ps["network"] != "peapod" {
        return Err(format!("ps shows {ps}").into());
    }

    let state = pods.inspect("web")?["state"].clone();
    let network = &state["network"];
    let address = network["addresses"][0].as_str().ok_or("no pod address")?;
    let ip = address.split('/').next().unwrap_or_default().to_string();
    let netns = PathBuf::from(network["netns"].as_str().ok_or("no netns")?);
    let host_veth = network["host_interface"].as_str().map(str::to_string);
    let id = pods.inspect("web")?["id"]
        .as_str()
        .ok_or("no id")?
        .to_string();
    let tap_mtu = mtu_in(&netns, "tap0")?;

    // The same host port again: refused, nothing of the second pod made.
    let netns_before = leftover_netns();
    let clash = pods.run(&[
        "run", "-d", "--name", "clash", "-p", &publish, IMAGE, "true",
    ])?;
    check(
        !clash.status.success()
            && String::from_utf8_lossy(&clash.stderr).contains("choose another host port"),
        "a second pod on a taken host port is refused, naming the fix",
        &clash,
    )?;
    if pods.ps_entry("clash")?.is_some() {
        return Err("the refused pod left a record".into());
    }
    // Pods of tests running alongside may have come meanwhile: a namespace new since then
    // is the refused pod's only when no process (its supervisor, its VMM) names it.
    let leaked: Vec<String> = leftover_netns()
        .into_iter()
        .filter(|n| !netns_before.contains(n))
        .filter(|n| processes_naming(n.trim_start_matches("peapod-")).is_empty())
        .collect();
    if !leaked.is_empty() {
        return Err(format!("the refused pod left network namespaces {leaked:?}").into());
    }

    // Another pod: reaches the first by its IP; sees its MTU, resolver and the host.
    let host_port = serve_http("hello-from-the-host")?;
    let script = format!(
        "wget -qO- http://{ip}/ && echo mtu=$(cat /sys/class/net/eth0/mtu) && \
         cat /etc/resolv.conf && gw=$(ip route | awk '/^default/ {{print $3}}') && \
         wget -qO- http://$gw:{host_port}/"
    );
    let out = pods.run(&["run", "--rm", IMAGE, "sh", "-c", &script])?;
    check(out.status.success(), "the client pod's checks", &out)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("hello-from-a-pod") {
        return Err(format!("pod-to-pod GET of http://{ip}/ gave: {text}").into());
    }
    if !text.contains(&format!("mtu={tap_mtu}")) {
        return Err(format!("eth0's MTU is not the tap's ({tap_mtu}): {text}").into());
    }
    if text.contains("127.0.0.53") {
        return Err(format!("the pod got the host's stub resolver: {text}").into());
    }
    if faked_dns && !text.contains(&format!("nameserver {UPSTREAM_DNS}")) {
        return Err(format!("the pod did not get the upstream resolver: {text}").into());
    }
    if !text.contains("hello-from-the-host") {
        return Err(format!("egress to the host's bridge address failed: {text}").into());
    }

    // What must go: first seen to be there, so that the checks below can fail.
    if !netns.exists() || leases_naming(&ip).is_empty() {
        return Err(format!(
            "the running pod's namespace {} or IP lease of {ip} is not where the checks look",
            netns.display()
        )
        .into());
    }
    if let Some(veth) = &host_veth
        && !Path::new("/sys/class/net").join(veth).exists()
    {
        return Err(format!("the running pod's host veth {veth} is not there").into());
    }

    if let Some(rules) = nat_rules()
        && !rules.contains(&id)
    {
        return Err(format!("no NAT rule names the running pod {id}:\n{rules}").into());
    }

    // SIGKILL the supervisor; `rm -f` must release everything.
    let pid = state["supervisor_pid"]
        .as_u64()
        .ok_or("no supervisor pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    pods.wait_status("web", "Failed", Duration::from_secs(10))?;
    pods.ok(&["rm", "-f", "web"])?;
    pods.nothing_left_of(&id)?;
    if netns.exists() {
        return Err(format!("network namespace {} is left", netns.display()).into());
    }
    if std::fs::read_to_string("/proc/mounts")?.contains(&netns.display().to_string()) {
        return Err(format!("the mount of {} is left", netns.display()).into());
    }
    if let Some(veth) = host_veth
        && Path::new("/sys/class/net").join(&veth).exists()
    {
        return Err(format!("host veth {veth} is left").into());
    }
    let leases = leases_naming(&ip);
    if !leases.is_empty() {
        return Err(format!("IP lease of {ip} is left: {leases:?}").into());
    }
    if let Some(rules) = nat_rules()
        && rules.contains(&id)
    {
        return Err(format!("NAT rules of pod {id} are left:\n{rules}").into());
    }
    TcpListener::bind(("127.0.0.1", WEB_PORT))
        .map_err(|e| format!("host port {WEB_PORT} is still held after rm: {e}"))?;
    Ok(())
}

/// `iptables -t nat -S`, where iptables runs.
fn nat_rules() -> Option<String> {
    let out = std::process::Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `peapod-*` network namespaces under /run/netns.
fn leftover_netns() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("peapod-"))
        .collect();
    names.sort();
    names
}

/// host-local lease files for `ip`, wherever the networks keep them.
fn leases_naming(ip: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["/run/peapod/cni/networks", "/var/lib/cni/networks"] {
        for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let lease = net.path().join(ip);
            if lease.exists() {
                found.push(lease);
            }
        }
    }
    found
}

fn two_containers() -> Result<(), Failed> {
    let pods = Pods::networked()?;
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: duo
spec:
  restartPolicy: Never
  containers:
    - name: server
      image: {IMAGE}
      command: ["sh", "-c", "mkdir -p /www && echo shared-localhost > /www/index.html && exec httpd -f -p 80 -h /www"]
      ports:
        - containerPort: 80
          hostPort: {DUO_PORT}
          hostIP: 127.0.0.1
    - name: client
      image: {IMAGE}
      command: ["sh", "-c", "for i in $(seq 1 100); do wget -qO- http://127.0.0.1/ && exit 0; sleep 0.3; done; exit 1"]
"#
    );
    let file = write_yaml(&pods, "duo.yaml", &yaml)?;
    pods.ok(&["pod", "apply", "-f", &file])?;
    wait_logs(&pods, "duo", "client", "shared-localhost")?;
    // hostPort from YAML is published like -p.
    let body = http_get(&format!("127.0.0.1:{DUO_PORT}"), Duration::from_secs(60))?;
    if body.trim() != "shared-localhost" {
        return Err(format!("GET via hostPort {DUO_PORT} gave {body:?}").into());
    }
    let out = pods.run(&["rm", "-f", "duo"])?;
    check(out.status.success(), "rm -f duo", &out)?;
    Ok(())
}
