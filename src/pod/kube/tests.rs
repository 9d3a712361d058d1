use super::*;
use crate::pod::spec::{PodVolumeSource, PortProtocol};

const WEB_AND_WORKER: &str = include_str!("../../../tests/kube/web-and-worker.yaml");
const KUBECTL_RUN: &str = include_str!("../../../tests/kube/kubectl-run.yaml");

/// A one-container pod with `extra` spliced into the container (indented under it) and
/// `spec_extra` into the spec.
fn pod(container_extra: &str, spec_extra: &str) -> String {
    let indent = |s: &str, n: usize| {
        s.lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n{}  containers:\n  - name: app\n    image: alpine\n{}",
        indent(spec_extra, 2),
        indent(container_extra, 4)
    )
}

#[test]
fn bad_documents_are_refused_naming_the_field() {
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  a: x\n---\n";
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown field",
            pod("comand: [sh]", ""),
            &[
                "document 1 (line 9)",
                "spec.containers[0].comand: unknown field (did you mean command?)",
            ],
        ),
        (
            "liveness probe",
            pod("livenessProbe:\n  exec: {command: [true]}", ""),
            &["spec.containers[0].livenessProbe: not supported by peapod"],
        ),
        (
            "host network",
            pod("", "hostNetwork: true"),
            &["line 6", "spec.hostNetwork: not supported by peapod"],
        ),
        (
            "privileged as a string",
            pod("securityContext:\n  privileged: \"yes\"", ""),
            &["spec.containers[0].securityContext.privileged: expected true or false"],
        ),
        (
            "unknown securityContext key",
            pod("securityContext:\n  priviliged: true", ""),
            &[
                "spec.containers[0].securityContext.priviliged: unknown field",
                "did you mean privileged?",
            ],
        ),
        (
            "capabilities",
            pod("securityContext:\n  capabilities: {add: [NET_ADMIN]}", ""),
            &["spec.containers[0].securityContext.capabilities: not supported by peapod"],
        ),
        (
            "pod-level privileged",
            pod("", "securityContext:\n  privileged: true"),
            &["spec.securityContext.privileged: unknown field"],
        ),
        (
            "pvc volume",
            pod(
                "",
                "volumes:\n- name: v\n  persistentVolumeClaim: {claimName: c}",
            ),
            &["spec.volumes[0].persistentVolumeClaim: not supported by peapod"],
        ),
        (
            "duplicate container names",
            pod("", "initContainers:\n- name: app\n  image: alpine"),
            &[
                "spec.containers[0].name",
                "two containers are named \"app\"",
            ],
        ),
        (
            "bad memory quantity",
            pod("resources:\n  limits:\n    memory: 12Gigs", ""),
            &[
                "spec.containers[0].resources.limits.memory",
                "\"12Gigs\" is not a quantity",
            ],
        ),
        (
            "missing image",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: app\n"
                .into(),
            &["spec.containers[0].image: required"],
        ),
        (
            "unknown runtime",
            pod("", "").replace(
                "name: p\n",
                "name: p\n  annotations:\n    peapod.dev/runtime: kata\n",
            ),
            &[
                "metadata.annotations[\"peapod.dev/runtime\"]",
                "\"kata\" is not a runtime: give vm or container",
            ],
        ),
        (
            "slash in a name",
            pod("", "").replace("name: p\n", "name: a/b\n"),
            &["metadata.name", "\"a/b\" is not a valid name"],
        ),
        (
            "container name with a slash",
            pod("", "").replace("name: app", "name: x/y"),
            &["spec.containers[0].name", "DNS-1123 label"],
        ),
        (
            "port out of range",
            pod("ports:\n- containerPort: 70000", ""),
            &[
                "spec.containers[0].ports[0].containerPort",
                "70000 is out of range",
            ],
        ),
        (
            "read-write hostPath",
            pod(
                "volumeMounts:\n- name: h\n  mountPath: /h",
                "volumes:\n- name: h\n  hostPath: {path: /srv}",
            ),
            &[
                "spec.containers[0].volumeMounts[0]",
                "read-write hostPath is not supported yet (mount it readOnly: true",
            ],
        ),
        (
            "no containers",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: []\n".into(),
            &["spec.containers: 0 containers"],
        ),
        (
            "wrong apiVersion",
            pod("", "").replace("apiVersion: v1", "apiVersion: apps/v1"),
            &["kind \"Pod\" of apiVersion \"apps/v1\" is not supported"],
        ),
        (
            "wrong kind",
            pod("", "").replace("kind: Pod", "kind: Deployment"),
            &["kind \"Deployment\" of apiVersion \"v1\""],
        ),
        (
            "secretKeyRef to a missing key",
            format!(
                "{secret}{}",
                pod(
                    "env:\n- name: X\n  valueFrom:\n    secretKeyRef: {name: s, key: b}",
                    ""
                )
            ),
            &[
                "document 2",
                "spec.containers[0].env[0].valueFrom.secretKeyRef.key",
                "no key \"b\"",
            ],
        ),
        (
            "syntax error",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [p\nspec: {}\n".into(),
            &["YAML syntax error at line 5"],
        ),
        (
            "mount of an undefined volume",
            pod("volumeMounts:\n- name: nope\n  mountPath: /x", ""),
            &[
                "spec.containers[0].volumeMounts[0]",
                "no volume named \"nope\"",
            ],
        ),
        (
            "bad base64",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  password: not*base64\n"
                .into(),
            &["line 5", "data.password: not valid base64"],
        ),
        (
            "duplicate volume names",
            pod(
                "",
                "volumes:\n- name: v\n  emptyDir: {}\n- name: v\n  emptyDir: {}",
            ),
            &["spec.volumes[1].name", "spec.volumes[0] is named \"v\" too"],
        ),
        (
            "relative mount path",
            pod(
                "volumeMounts:\n- name: v\n  mountPath: x",
                "volumes:\n- {name: v, emptyDir: {}}",
            ),
            &[
                "spec.containers[0].volumeMounts[0].mountPath",
                "absolute path",
            ],
        ),
        (
            "subPath escaping",
            pod(
                "volumeMounts:\n- {name: v, mountPath: /x, subPath: ../etc}",
                "volumes:\n- {name: v, emptyDir: {}}",
            ),
            &["spec.containers[0].volumeMounts[0].subPath", "without '..'"],
        ),
        (
            "bad restart policy",
            pod("", "restartPolicy: Sometimes"),
            &["spec.restartPolicy", "Always, OnFailure or Never"],
        ),
        (
            "unquoted number in args",
            pod("args: [sleep, 10]", ""),
            &[
                "spec.containers[0].args[1]",
                "expected a string, found a number",
            ],
        ),
        (
            "bad cpu annotation",
            pod("", "").replace(
                "name: p\n",
                "name: p\n  annotations: {peapod.dev/vm-cpus: \"64\"}\n",
            ),
            &["metadata.annotations[\"peapod.dev/vm-cpus\"]", "1 to 32"],
        ),
        (
            "configMap env",
            pod("envFrom:\n- configMapRef: {name: c}", ""),
            &["spec.containers[0].envFrom[0].configMapRef: not supported by peapod"],
        ),
        (
            "dnsPolicy None",
            pod("", "dnsPolicy: None"),
            &["spec.dnsPolicy: not supported by peapod (only ClusterFirst or Default"],
        ),
    ];
    for (what, yaml, wants) in &cases {
        let err = parse_documents(yaml).expect_err(what).to_string();
        for want in *wants {
            assert!(err.contains(want), "{what}: {err:?} lacks {want:?}");
        }
    }
    assert!(cases.len() >= 14);
}

#[test]
fn secret_values_never_appear_in_messages() {
    let cases = [
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  k: hunter2*\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  k: [hunter2]\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  k: \"hunter2\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  k: hunter2\n  k: hunter2\n",
    ];
    for yaml in cases {
        let err = parse_documents(yaml).expect_err(yaml).to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            !err.contains("Options"),
            "no advice meant for the crate's users: {err}"
        );
    }
    let docs = parse_documents(WEB_AND_WORKER).unwrap();
    let debug = format!("{docs:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("abc123"),
        "{debug}"
    );
    assert!(debug.contains("<redacted, 7 bytes>"), "{debug}");
}

#[test]
fn the_runtime_annotation_picks_the_isolation_model() {
    let with = |value: &str| {
        pod("", "").replace(
            "name: p\n",
            &format!("name: p\n  annotations:\n    {RUNTIME_ANNOTATION}: {value}\n"),
        )
    };
    let runtime = |yaml: &str| parse_documents(yaml).unwrap().pods[0].runtime;
    assert_eq!(
        runtime(&with("container")),
        Some(crate::runtime::RuntimeKind::Container)
    );
    assert_eq!(runtime(&with("vm")), Some(crate::runtime::RuntimeKind::Vm));
    assert_eq!(runtime(&pod("", "")), None);
}

#[test]
fn kubectl_run_output_is_accepted_with_one_warning() {
    let docs = parse_documents(KUBECTL_RUN).unwrap();
    assert_eq!(docs.pods.len(), 1);
    let pod = &docs.pods[0];
    assert_eq!(pod.name, "web");
    assert_eq!(pod.labels["run"], "web");
    assert_eq!(pod.restart_policy, RestartPolicy::Always);
    assert_eq!(pod.containers[0].image, "nginx");
    assert_eq!(pod.containers[0].pull_policy, PullPolicy::Always);
    assert_eq!(
        pod.vm,
        VmSize {
            cpus: 1,
            memory_mib: VM_DEFAULT_MEMORY_MIB
        }
    );
    assert_eq!(docs.warnings.len(), 1, "{:?}", docs.warnings);
    let w = &docs.warnings[0];
    for field in [
        "metadata.creationTimestamp",
        "spec.containers[0].resources",
        "spec.dnsPolicy",
        "status",
    ] {
        assert_eq!(w.matches(field).count(), 1, "{field} in {w}");
    }
    assert!(w.starts_with("document 1 (pod web)"), "{w}");
}

#[test]
fn the_harmless_fields_of_a_pod_from_the_api_server_are_listed() {
    let yaml = pod(
        "terminationMessagePath: /dev/termination-log\nterminationMessagePolicy: File\nstdin: false\ntty: false\nsecurityContext: {}",
        "schedulerName: default-scheduler\nenableServiceLinks: true\npriority: 0\ntolerations: []\nnodeSelector: {}\nserviceAccountName: default\nserviceAccount: default\nsecurityContext: {}",
    )
    .replace(
        "name: p\n",
        "name: p\n  namespace: default\n  uid: 1-2\n  resourceVersion: \"7\"\n  generation: 1\n  managedFields: []\n",
    ) + "status:\n  phase: Running\n";
    let docs = parse_documents(&yaml).unwrap();
    assert_eq!(docs.warnings.len(), 1);
    for f in [
        "metadata.namespace",
        "metadata.uid",
        "metadata.managedFields",
        "spec.schedulerName",
        "spec.tolerations",
        "spec.securityContext",
        "spec.containers[0].terminationMessagePath",
        "spec.containers[0].tty",
        "spec.containers[0].securityContext",
        "status",
    ] {
        assert!(docs.warnings[0].contains(f), "{f}: {}", docs.warnings[0]);
    }
    let tty = pod("tty: true", "");
    let err = parse_documents(&tty).unwrap_err().to_string();
    assert!(
        err.contains("spec.containers[0].tty: not supported"),
        "{err}"
    );
}

#[test]
fn a_multi_container_pod_with_init_volumes_and_secrets() {
    let docs = parse_documents(WEB_AND_WORKER).unwrap();
    assert!(docs.warnings.is_empty(), "{:?}", docs.warnings);
    let [secret] = docs.secrets.as_slice() else {
        panic!("{docs:?}")
    };
    assert_eq!(secret.name, "app-secret");
    assert_eq!(secret.data["password"], b"hunter2");
    assert_eq!(secret.data["token"], b"abc123");

    let [pod] = docs.pods.as_slice() else {
        panic!("{docs:?}")
    };
    assert_eq!(pod.name, "web-and-worker");
    assert_eq!(pod.hostname.as_deref(), Some("demo"));
    assert_eq!(pod.annotations["note"], "two containers");
    assert_eq!(
        pod.restart_policy,
        RestartPolicy::OnFailure { max_retries: None }
    );
    assert_eq!(pod.termination_grace_period_s, Some(5));
    assert_eq!(
        pod.volumes,
        vec![
            PodVolume {
                name: "shared".into(),
                source: PodVolumeSource::EmptyDir {
                    memory: true,
                    size_limit_bytes: Some(64 << 20)
                },
            },
            PodVolume {
                name: "creds".into(),
                source: PodVolumeSource::Secret {
                    secret_name: "app-secret".into(),
                    optional: false
                },
            },
            PodVolume {
                name: "config".into(),
                source: PodVolumeSource::HostSnapshot {
                    source: "/etc/ssl".into(),
                    disk: "volumes/config.erofs".into()
                },
            },
        ]
    );

    let [init] = pod.init_containers.as_slice() else {
        panic!()
    };
    assert_eq!(init.name, "prepare");
    assert_eq!(init.pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(init.run_as_user, Some(1000), "the pod's runAsUser");
    assert_eq!(
        init.volume_mounts[0].mount_path,
        std::path::Path::new("/shared")
    );

    let [web, worker] = pod.containers.as_slice() else {
        panic!()
    };
    assert_eq!(web.env, vec!["MODE=web"]);
    assert_eq!(
        web.secret_env,
        vec![SecretEnv::Key {
            env_name: "PASSWORD".into(),
            secret: "app-secret".into(),
            key: "password".into(),
            optional: false
        }]
    );
    assert_eq!(
        web.ports,
        vec![
            PortSpec {
                container_port: 80,
                host_port: Some(8080),
                host_ip: Some("127.0.0.1".into()),
                protocol: PortProtocol::Tcp
            },
            PortSpec {
                container_port: 53,
                host_port: None,
                host_ip: None,
                protocol: PortProtocol::Udp
            },
        ]
    );
    assert_eq!(web.cpu_limit_millis, Some(500));
    assert_eq!(web.memory_limit_bytes, Some(128 << 20));
    assert_eq!(web.volume_mounts.len(), 2);
    assert!(web.volume_mounts.iter().all(|m| m.read_only));

    assert_eq!(worker.command, Some(vec!["sh".to_string()]));
    assert_eq!(
        worker.args,
        Some(vec!["-c".to_string(), "sleep 3600".to_string()])
    );
    assert_eq!(worker.working_dir.as_deref(), Some("/work"));
    assert_eq!(
        worker.secret_env,
        vec![SecretEnv::All {
            secret: "app-secret".into(),
            optional: false
        }]
    );
    assert_eq!(
        worker.run_as_user,
        Some(0),
        "the container's runAsUser wins"
    );
    assert_eq!(worker.run_as_group, Some(0));
    assert!(worker.read_only_root);
    assert_eq!(worker.volume_mounts[0].sub_path.as_deref(), Some("data"));
    assert_eq!(worker.pull_policy, PullPolicy::IfNotPresent);

    // 500m + 1 cpu → 2 vCPUs; 128Mi + 1Gi + 128 MiB overhead.
    assert_eq!(
        pod.vm,
        VmSize {
            cpus: 2,
            memory_mib: 128 + 1024 + 128
        }
    );
}

#[test]
fn a_key_ref_to_a_secret_elsewhere_is_left_to_the_caller() {
    let yaml = pod(
        "env:\n- name: X\n  valueFrom:\n    secretKeyRef: {name: stored, key: k}",
        "",
    );
    let docs = parse_documents(&yaml).unwrap();
    assert_eq!(docs.pods[0].containers[0].secret_env.len(), 1);
    let optional = "apiVersion: v1\nkind: Secret\nmetadata: {name: stored}\n---\n".to_owned()
        + &yaml.replace("key: k}", "key: k, optional: true}");
    parse_documents(&optional).unwrap();
}

#[test]
fn empty_documents_are_skipped_and_empty_input_refused() {
    let yaml = format!("---\n# nothing\n---\n{}---\n", pod("", ""));
    assert_eq!(parse_documents(&yaml).unwrap().pods.len(), 1);
    assert!(matches!(parse_documents(""), Err(KubeError::Empty)));
    assert!(matches!(parse_documents("---\n"), Err(KubeError::Empty)));
}

fn container(cpu: Option<u64>, memory_mib: Option<u64>) -> KubeContainer {
    KubeContainer {
        name: "c".into(),
        image: "alpine".into(),
        pull_policy: PullPolicy::Always,
        command: None,
        args: None,
        env: vec![],
        secret_env: vec![],
        working_dir: None,
        ports: vec![],
        memory_limit_bytes: memory_mib.map(|m| m << 20),
        cpu_limit_millis: cpu,
        run_as_user: None,
        run_as_group: None,
        read_only_root: false,
        privileged: false,
        volume_mounts: vec![],
    }
}

#[test]
fn privileged_is_a_containers_own_and_false_unless_written() {
    let cases: &[(&str, &str, bool)] = &[
        ("absent", "", false),
        ("true", "securityContext:\n  privileged: true", true),
        ("false", "securityContext:\n  privileged: false", false),
        (
            "beside other keys",
            "securityContext:\n  runAsUser: 0\n  privileged: true\n  readOnlyRootFilesystem: true",
            true,
        ),
        ("empty context", "securityContext: {}", false),
    ];
    for (what, extra, want) in cases {
        let docs = parse_documents(&pod(extra, "")).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(docs.pods[0].containers[0].privileged, *want, "{what}");
    }
    // An init container may be privileged too, on its own.
    let yaml = pod(
        "",
        "initContainers:\n- name: setup\n  image: alpine\n  securityContext: {privileged: true}",
    );
    let docs = parse_documents(&yaml).unwrap();
    let p = &docs.pods[0];
    assert!(p.init_containers[0].privileged);
    assert!(!p.containers[0].privileged);
}

#[test]
fn vm_size_from_limits_and_annotations() {
    let none = BTreeMap::new();
    let size = |cpus, memory_mib| VmSize { cpus, memory_mib };
    let cases: &[(&[KubeContainer], &[KubeContainer], VmSize)] = &[
        (&[], &[container(None, None)], size(1, 256)),
        (&[], &[container(Some(100), None)], size(1, 256)),
        (&[], &[container(Some(1500), Some(256))], size(2, 384)),
        (
            &[],
            &[container(Some(500), Some(100)), container(Some(600), None)],
            size(2, 228),
        ),
        // An init container larger than the sum decides.
        (
            &[container(Some(4000), Some(2048))],
            &[container(Some(500), Some(100))],
            size(4, 2176),
        ),
    ];
    for (init, regular, want) in cases {
        assert_eq!(vm_size(&none, init, regular).unwrap(), *want);
    }
    let too_big = [container(Some(33_000), None)];
    let err = vm_size(&none, &[], &too_big).unwrap_err().to_string();
    assert!(
        err.contains("limits.cpu") && err.contains("33 vCPUs"),
        "{err}"
    );

    let annotations = |cpus: &str, memory: &str| {
        BTreeMap::from([
            (VM_CPUS_ANNOTATION.to_string(), cpus.to_string()),
            (VM_MEMORY_ANNOTATION.to_string(), memory.to_string()),
        ])
    };
    let big = [container(Some(8000), Some(8192))];
    assert_eq!(
        vm_size(&annotations("2", "1Gi"), &[], &big).unwrap(),
        size(2, 1024)
    );
    assert_eq!(
        vm_size(&annotations("32", "64Gi"), &[], &big).unwrap(),
        size(32, 65536)
    );
    for (cpus, memory, want) in [
        ("0", "1Gi", "vm-cpus"),
        ("33", "1Gi", "vm-cpus"),
        ("two", "1Gi", "vm-cpus"),
        ("2", "32Mi", "vm-memory"),
        ("2", "65Gi", "vm-memory"),
        ("2", "12Gigs", "vm-memory"),
    ] {
        let err = vm_size(&annotations(cpus, memory), &[], &big)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{cpus} {memory}: {err}");
    }
}

#[test]
fn quantities_in_yaml_as_strings_and_numbers() {
    let cases = [
        ("cpu: 500m", Some(500), None),
        ("cpu: 2", Some(2000), None),
        ("cpu: 0.5", Some(500), None),
        ("memory: 128Mi", None, Some(128 << 20)),
        ("memory: 1G", None, Some(1_000_000_000)),
        ("memory: 1e3", None, Some(1000)),
        ("memory: 512k", None, Some(512_000)),
    ];
    for (limit, cpu, memory) in cases {
        let yaml = pod(&format!("resources:\n  limits:\n    {limit}"), "");
        let docs = parse_documents(&yaml).unwrap_or_else(|e| panic!("{limit}: {e}"));
        let c = &docs.pods[0].containers[0];
        assert_eq!(
            (c.cpu_limit_millis, c.memory_limit_bytes),
            (cpu, memory),
            "{limit}"
        );
    }
    for bad in ["cpu: 1 core", "memory: 12Gigs", "memory: -1", "cpu: [1]"] {
        let yaml = pod(&format!("resources:\n  limits:\n    {bad}"), "");
        let err = parse_documents(&yaml).unwrap_err().to_string();
        let field = bad.split(':').next().unwrap();
        assert!(
            err.contains(&format!("spec.containers[0].resources.limits.{field}")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn pull_policy_defaults_as_kubernetes() {
    for (image, want) in [
        ("nginx", PullPolicy::Always),
        ("nginx:latest", PullPolicy::Always),
        ("nginx:1.27", PullPolicy::IfNotPresent),
        ("localhost:5000/app", PullPolicy::Always),
        ("localhost:5000/app:v1", PullPolicy::IfNotPresent),
        ("nginx@sha256:abc", PullPolicy::IfNotPresent),
    ] {
        assert_eq!(PullPolicy::default_for(image), want, "{image}");
    }
}

#[test]
fn unexpanded_var_references_are_warned_about() {
    let shell = parse_documents(&pod("args: [\"echo $(cat /etc/hostname)\"]", "")).unwrap();
    assert!(
        !shell.warnings.iter().any(|w| w.contains("$(VAR)")),
        "a shell command substitution is not a variable reference: {:?}",
        shell.warnings
    );
    let docs = parse_documents(&pod("args: [\"echo $(HOME)\"]", "")).unwrap();
    assert!(
        docs.warnings.iter().any(|w| w.contains("$(VAR)")),
        "{:?}",
        docs.warnings
    );
}
