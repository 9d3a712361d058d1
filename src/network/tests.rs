//! attach/detach with fake plugins (state file, undo, idempotence) and, as root, with
//! Debian's real bridge and host-local plugins.

use std::process::Command;

use super::cni::tests::fake_plugin;
use super::*;

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn state_for(dir: &Path, plugins: &str, result: Option<Value>) -> AttachState {
    AttachState {
        version: STATE_VERSION,
        pod_id: "pod1".into(),
        netns: dir.join("netns-gone"),
        ifname: POD_IFNAME.into(),
        plugin_dirs: vec![dir.to_path_buf()],
        runtime_config: Map::new(),
        conflist: serde_json::from_str(&format!(
            r#"{{"cniVersion":"1.0.0","name":"fake","plugins":{plugins}}}"#
        ))
        .unwrap(),
        result,
    }
}

/// A plugin that logs "COMMAND netns-exists prevResult?" and succeeds.
fn logging_plugin(dir: &Path, name: &str) -> PathBuf {
    let log = dir.join(format!("{name}.log"));
    fake_plugin(
        dir,
        name,
        &format!(
            r#"input=$(cat)
case "$input" in *prevResult*) prev=prev;; *) prev=noprev;; esac
[ -e "$CNI_NETNS" ] && ns=ns || ns=nons
echo "$CNI_COMMAND $ns $prev" >> {log}
echo '{{"cniVersion":"1.0.0"}}'"#,
            log = log.display()
        ),
    );
    log
}

#[test]
fn detach_runs_del_once_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let log = logging_plugin(dir.path(), "fake");
    let state_file = dir.path().join("run/network.json");
    let result = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
    write_state(
        &state_file,
        &state_for(dir.path(), r#"[{"type":"fake"}]"#, Some(result)),
    )
    .unwrap();
    detach(&state_file).unwrap();
    assert!(!state_file.exists());
    // a namespace that is gone already still gets DEL, with the ADD result
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "DEL nons prev\n");
    detach(&state_file).unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "DEL nons prev\n");
}

#[test]
fn a_failed_del_keeps_the_state_for_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    fake_plugin(
        dir.path(),
        "flaky",
        &format!(
            r#"cat >/dev/null
if [ -e {ok} ]; then echo '{{}}'; exit 0; fi
echo '{{"cniVersion":"1.0.0","code":999,"msg":"try again"}}'; exit 1"#,
            ok = dir.path().join("ok").display()
        ),
    );
    let state_file = dir.path().join("network.json");
    write_state(
        &state_file,
        &state_for(dir.path(), r#"[{"type":"flaky"}]"#, None),
    )
    .unwrap();
    let err = detach(&state_file).unwrap_err().to_string();
    assert!(err.contains("try again") && err.contains("999"), "{err}");
    assert!(state_file.exists());
    std::fs::write(dir.path().join("ok"), "").unwrap();
    detach(&state_file).unwrap();
    assert!(!state_file.exists());
}

#[test]
fn damaged_state_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("network.json");
    std::fs::write(&state_file, "{").unwrap();
    let err = detach(&state_file).unwrap_err();
    assert!(matches!(err, NetworkError::BadState { .. }), "{err}");
    assert!(state_file.exists());
}

#[test]
fn attach_refuses_bad_ids_and_existing_state() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("network.json");
    let mut setup = NetworkSetup::new("bad/id", &state_file);
    setup.conf_dir = dir.path().to_path_buf();
    assert!(matches!(attach(&setup), Err(NetworkError::BadPodId(_))));
    setup.pod_id = "ok".into();
    std::fs::write(&state_file, "{}").unwrap();
    assert!(matches!(
        attach(&setup),
        Err(NetworkError::AlreadyAttached(_))
    ));
}

fn fake_setup(dir: &Path, plugin: &str) -> NetworkSetup {
    let conf_dir = dir.join("conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("fake.conflist"),
        format!(r#"{{"cniVersion":"1.0.0","name":"fake","plugins":[{{"type":"{plugin}"}}]}}"#),
    )
    .unwrap();
    NetworkSetup {
        name: "fake".into(),
        conf_dir,
        plugin_dirs: vec![dir.to_path_buf()],
        netns_dir: PathBuf::from(DEFAULT_NETNS_DIR),
        state_file: dir.join("run/network.json"),
        pod_id: format!("test-{}", random_hex(4)),
        runtime_config: Map::new(),
    }
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    if !netns::can_create() {
        eprintln!("skipped: needs root to make network namespaces");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // ADD fails outright
    let log = dir.path().join("log");
    fake_plugin(
        dir.path(),
        "nope",
        &format!(
            r#"cat >/dev/null
echo "$CNI_COMMAND" >> {log}
[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{{"cniVersion":"1.0.0","code":11,"msg":"no addresses left"}}'; exit 1"#,
            log = log.display()
        ),
    );
    let setup = fake_setup(dir.path(), "nope");
    let netns_path = setup.netns_dir.join(format!("peapod-{}", setup.pod_id));
    let err = attach(&setup).unwrap_err().to_string();
    assert!(err.contains("no addresses left"), "{err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ADD\nDEL\n");
    assert!(!netns_path.exists());
    assert!(!setup.state_file.exists());
    // ADD "succeeds" but makes no eth0 in the namespace
    logging_plugin(dir.path(), "empty");
    let setup = fake_setup(dir.path(), "empty");
    let netns_path = setup.netns_dir.join(format!("peapod-{}", setup.pod_id));
    let err = attach(&setup).unwrap_err();
    assert!(matches!(err, NetworkError::NoPodInterface { .. }), "{err}");
    let logged = std::fs::read_to_string(dir.path().join("empty.log")).unwrap();
    assert_eq!(logged, "ADD ns noprev\nDEL ns prev\n");
    assert!(!netns_path.exists());
    assert!(!setup.state_file.exists());
}

/// A test network on Debian's real plugins, touching nothing global: its own bridge, a
/// test subnet, host-local's leases in a temp dir.
struct RealNetwork {
    dir: tempfile::TempDir,
    bridge: String,
    subnet_prefix: String,
}

impl RealNetwork {
    fn new(ip_masq: bool) -> Option<Self> {
        if !netns::can_create() {
            eprintln!("skipped: needs root to make network namespaces");
            return None;
        }
        let plugins = Path::new(DEFAULT_PLUGIN_DIR);
        if !plugins.join("bridge").is_file() || !plugins.join("host-local").is_file() {
            eprintln!(
                "skipped: no CNI plugins in {DEFAULT_PLUGIN_DIR} (containernetworking-plugins)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("pptest{}", random_hex(3));
        let third = u8::from_str_radix(&random_hex(1), 16).unwrap();
        let subnet_prefix = format!("10.213.{third}");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "pptest",
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": ip_masq,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.path().join("ipam"),
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": format!("{subnet_prefix}.0/24"),
                                 "gateway": format!("{subnet_prefix}.1")}]]
                }
            }]
        });
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        std::fs::write(
            dir.path().join("conf/pptest.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        Some(RealNetwork {
            dir,
            bridge,
            subnet_prefix,
        })
    }

    fn setup(&self, pod: &str) -> NetworkSetup {
        NetworkSetup {
            name: "pptest".into(),
            conf_dir: self.dir.path().join("conf"),
            plugin_dirs: vec![PathBuf::from(DEFAULT_PLUGIN_DIR)],
            netns_dir: PathBuf::from(DEFAULT_NETNS_DIR),
            state_file: self.dir.path().join(format!("{pod}/network.json")),
            pod_id: format!("{pod}-{}", random_hex(4)),
            runtime_config: Map::new(),
        }
    }

    fn lease(&self, ip: IpAddr) -> PathBuf {
        self.dir.path().join(format!("ipam/pptest/{ip}"))
    }
}

impl Drop for RealNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn check_attached(net: &RealNetwork, pod: &PodAttachment) -> IpAddr {
    let addrs = pod.addresses();
    assert_eq!(addrs.len(), 1, "{:?}", pod.result);
    let ip = addrs[0].addr;
    assert!(ip.to_string().starts_with(&net.subnet_prefix), "{ip}");
    assert_eq!(addrs[0].prefix_len, 24);
    let gateway = pod.gateway().unwrap();
    assert_eq!(gateway.to_string(), format!("{}.1", net.subnet_prefix));
    assert_eq!(pod.routes()[0].dst.prefix_len, 0);
    assert_eq!(pod.ifname, "eth0");
    assert!(pod.mtu >= 576, "{}", pod.mtu);
    let result_mac = pod.result.interfaces[pod.result.sandbox_interface("eth0").unwrap()]
        .mac
        .as_deref()
        .and_then(result::parse_mac);
    assert_eq!(result_mac, Some(pod.mac));
    assert!(link_exists(&net.bridge), "bridge {} missing", net.bridge);
    assert!(net.lease(ip).is_file(), "no lease file for {ip}");
    ip
}

/// `ping -c1 -W2 target` from inside the namespace: iputils' ping, else busybox's; `None`
/// when neither is here.
fn ping_from(netns_path: &Path, target: IpAddr) -> Option<bool> {
    let ping = crate::machine::assets::find_in_path("ping")
        .map(|p| (p, vec![]))
        .or_else(|| {
            let busybox = PathBuf::from("/bin/busybox");
            busybox
                .is_file()
                .then(|| (busybox, vec!["ping".to_string()]))
        })?;
    let ok = netns::in_netns(netns_path, || {
        Command::new(&ping.0)
            .args(&ping.1)
            .args(["-c1", "-W2", &target.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .unwrap();
    Some(ok)
}

fn host_veths(pod: &PodAttachment) -> Vec<String> {
    pod.result
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_none() && i.name.starts_with("veth"))
        .map(|i| i.name.clone())
        .collect()
}

#[test]
fn real_plugins_attach_ping_and_detach() {
    let Some(net) = RealNetwork::new(false) else {
        return;
    };
    let setup = net.setup("a");
    let pod = attach(&setup).unwrap();
    let ip = check_attached(&net, &pod);
    assert!(setup.state_file.is_file());
    assert!(pod.netns.exists());
    let veths = host_veths(&pod);
    assert_eq!(veths.len(), 1, "{:?}", pod.result);
    assert!(link_exists(&veths[0]));
    println!(
        "ADD result: {}",
        serde_json::to_string(&pod.result).unwrap()
    );
    match ping_from(&pod.netns, pod.gateway().unwrap()) {
        Some(replied) => assert!(replied, "no ping reply from the gateway"),
        None => eprintln!("no ping here: gateway reachability not checked"),
    }
    detach(&setup.state_file).unwrap();
    assert!(!pod.netns.exists());
    assert!(!link_exists(&veths[0]));
    assert!(!net.lease(ip).exists());
    assert!(!setup.state_file.exists());
    detach(&setup.state_file).unwrap();

    // DEL after the namespace vanished (as after a host reboot) still frees the lease
    let setup = net.setup("b");
    let pod = attach(&setup).unwrap();
    let ip = check_attached(&net, &pod);
    netns::remove(&pod.netns).unwrap();
    detach(&setup.state_file).unwrap();
    assert!(!net.lease(ip).exists(), "lease {ip} kept");
}

fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ipMasq adds NAT rules to the host's global tables, so this runs only in the test bed
/// (`peapod machine run`, which sets PEAPOD_IN_MACHINE) or when asked to.
#[test]
fn real_plugins_masquerade_in_the_test_bed() {
    if std::env::var_os("PEAPOD_IN_MACHINE").is_none()
        && std::env::var_os("PEAPOD_TEST_GLOBAL_NAT").is_none()
    {
        eprintln!("skipped: changes the host's NAT table; runs in `peapod machine run`");
        return;
    }
    let Some(net) = RealNetwork::new(true) else {
        return;
    };
    let setup = net.setup("m");
    let pod = attach(&setup).unwrap();
    check_attached(&net, &pod);
    let rules = nat_rules();
    println!("iptables -t nat -S after ADD:\n{rules}");
    let comment = setup.pod_id.clone();
    assert!(rules.contains("MASQUERADE"), "{rules}");
    assert!(rules.contains(&comment), "{rules}");
    detach(&setup.state_file).unwrap();
    let rules = nat_rules();
    println!("iptables -t nat -S after DEL:\n{rules}");
    assert!(!rules.contains(&comment), "{rules}");
}
