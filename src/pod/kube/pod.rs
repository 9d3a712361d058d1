//! `kind: Pod`: its field tables and the walk that turns it into a [`KubePod`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Component, Path};

use super::node::{Class, Ctx, Field, Fields, Node, Table, Value};
use super::{
    FieldError, KeyRef, KubeContainer, KubeError, KubePod, PullPolicy, RUNTIME_ANNOTATION,
    is_dns_label, is_dns_subdomain, label_message, quantity, vm_size,
};
use crate::pod::spec::{
    CONTAINERS, PodVolume, PodVolumeSource, PortProtocol, PortSpec, RestartPolicy, SecretEnv,
    VolumeMount,
};

use Class::{Harmless, HarmlessIf, Supported, Unsupported, UnsupportedHint};

fn is_false(v: &Value) -> bool {
    matches!(v, Value::Bool(false) | Value::Null)
}

fn is_default_dns(v: &Value) -> bool {
    matches!(v, Value::Str(s) if s == "ClusterFirst" || s == "Default")
}

fn is_directory_type(v: &Value) -> bool {
    matches!(v, Value::Null) || matches!(v, Value::Str(s) if s.is_empty() || s == "Directory")
}

const POD: Table = &[
    ("apiVersion", Supported),
    ("kind", Supported),
    ("metadata", Supported),
    ("spec", Supported),
    ("status", Harmless),
];

pub(super) const METADATA: Table = &[
    ("name", Supported),
    ("labels", Supported),
    ("annotations", Supported),
    ("creationTimestamp", Harmless),
    ("namespace", Harmless),
    ("uid", Harmless),
    ("resourceVersion", Harmless),
    ("generation", Harmless),
    ("managedFields", Harmless),
    ("selfLink", Harmless),
    (
        "generateName",
        UnsupportedHint("give the pod a metadata.name"),
    ),
    ("ownerReferences", Unsupported),
    ("finalizers", Unsupported),
    ("deletionTimestamp", Unsupported),
    ("deletionGracePeriodSeconds", Unsupported),
];

const SPEC: Table = &[
    ("containers", Supported),
    ("initContainers", Supported),
    ("volumes", Supported),
    ("restartPolicy", Supported),
    ("terminationGracePeriodSeconds", Supported),
    ("hostname", Supported),
    ("securityContext", Supported),
    (
        "dnsPolicy",
        HarmlessIf(is_default_dns, "ClusterFirst or Default"),
    ),
    ("schedulerName", Harmless),
    ("enableServiceLinks", Harmless),
    ("priority", Harmless),
    ("priorityClassName", Harmless),
    ("preemptionPolicy", Harmless),
    ("tolerations", Harmless),
    ("nodeSelector", Harmless),
    ("nodeName", Harmless),
    ("affinity", Harmless),
    ("topologySpreadConstraints", Harmless),
    ("schedulingGates", Harmless),
    ("serviceAccountName", Harmless),
    ("serviceAccount", Harmless),
    ("automountServiceAccountToken", Harmless),
    ("hostNetwork", HarmlessIf(is_false, "false")),
    ("hostPID", HarmlessIf(is_false, "false")),
    ("hostIPC", HarmlessIf(is_false, "false")),
    ("shareProcessNamespace", HarmlessIf(is_false, "false")),
    ("dnsConfig", Unsupported),
    ("hostAliases", Unsupported),
    ("subdomain", Unsupported),
    ("setHostnameAsFQDN", Unsupported),
    ("activeDeadlineSeconds", Unsupported),
    ("readinessGates", Unsupported),
    ("runtimeClassName", Unsupported),
    ("overhead", Unsupported),
    ("ephemeralContainers", Unsupported),
    ("os", Unsupported),
    ("hostUsers", Unsupported),
    ("resourceClaims", Unsupported),
    ("imagePullSecrets", Unsupported),
];

const POD_SECURITY: Table = &[
    ("runAsUser", Supported),
    ("runAsGroup", Supported),
    ("runAsNonRoot", Unsupported),
    ("fsGroup", Unsupported),
    ("fsGroupChangePolicy", Unsupported),
    ("supplementalGroups", Unsupported),
    ("supplementalGroupsPolicy", Unsupported),
    ("sysctls", Unsupported),
    ("seLinuxOptions", Unsupported),
    ("seLinuxChangePolicy", Unsupported),
    ("seccompProfile", Unsupported),
    ("appArmorProfile", Unsupported),
    ("windowsOptions", Unsupported),
];

const CONTAINER: Table = &[
    ("name", Supported),
    ("image", Supported),
    ("imagePullPolicy", Supported),
    ("command", Supported),
    ("args", Supported),
    ("env", Supported),
    ("envFrom", Supported),
    ("workingDir", Supported),
    ("ports", Supported),
    ("resources", Supported),
    ("securityContext", Supported),
    ("volumeMounts", Supported),
    ("terminationMessagePath", Harmless),
    ("terminationMessagePolicy", Harmless),
    (
        "stdin",
        HarmlessIf(is_false, "false: applied pods run detached"),
    ),
    (
        "stdinOnce",
        HarmlessIf(is_false, "false: applied pods run detached"),
    ),
    (
        "tty",
        HarmlessIf(is_false, "false: applied pods run detached"),
    ),
    ("livenessProbe", Unsupported),
    ("readinessProbe", Unsupported),
    ("startupProbe", Unsupported),
    ("lifecycle", Unsupported),
    ("volumeDevices", Unsupported),
    ("resizePolicy", Unsupported),
    ("restartPolicy", Unsupported),
];

const CONTAINER_SECURITY: Table = &[
    ("runAsUser", Supported),
    ("runAsGroup", Supported),
    ("readOnlyRootFilesystem", Supported),
    ("privileged", Supported),
    ("allowPrivilegeEscalation", Unsupported),
    ("capabilities", Unsupported),
    ("runAsNonRoot", Unsupported),
    ("seLinuxOptions", Unsupported),
    ("seccompProfile", Unsupported),
    ("appArmorProfile", Unsupported),
    ("procMount", Unsupported),
    ("windowsOptions", Unsupported),
];

const RESOURCES: Table = &[
    ("limits", Supported),
    ("requests", Supported),
    ("claims", Unsupported),
];

const RESOURCE_LIST: Table = &[
    ("cpu", Supported),
    ("memory", Supported),
    ("ephemeral-storage", Unsupported),
    ("hugepages-2Mi", Unsupported),
    ("hugepages-1Gi", Unsupported),
];

const ENV: Table = &[
    ("name", Supported),
    ("value", Supported),
    ("valueFrom", Supported),
];

const VALUE_FROM: Table = &[
    ("secretKeyRef", Supported),
    ("configMapKeyRef", Unsupported),
    ("fieldRef", Unsupported),
    ("resourceFieldRef", Unsupported),
    ("fileKeyRef", Unsupported),
];

const SECRET_KEY_REF: Table = &[
    ("name", Supported),
    ("key", Supported),
    ("optional", Supported),
];

const ENV_FROM: Table = &[
    ("secretRef", Supported),
    ("configMapRef", Unsupported),
    ("prefix", Unsupported),
];

const SECRET_REF: Table = &[("name", Supported), ("optional", Supported)];

const PORT: Table = &[
    ("containerPort", Supported),
    ("hostPort", Supported),
    ("hostIP", Supported),
    ("protocol", Supported),
    ("name", Harmless),
];

const MOUNT: Table = &[
    ("name", Supported),
    ("mountPath", Supported),
    ("readOnly", Supported),
    ("subPath", Supported),
    ("mountPropagation", Unsupported),
    ("subPathExpr", Unsupported),
    ("recursiveReadOnly", Unsupported),
];

const OTHER_VOLUMES: &str = "a volume is emptyDir, secret, or hostPath mounted readOnly";

const VOLUME: Table = &[
    ("name", Supported),
    ("emptyDir", Supported),
    ("hostPath", Supported),
    ("secret", Supported),
    ("persistentVolumeClaim", UnsupportedHint(OTHER_VOLUMES)),
    ("configMap", UnsupportedHint(OTHER_VOLUMES)),
    ("nfs", UnsupportedHint(OTHER_VOLUMES)),
    ("projected", UnsupportedHint(OTHER_VOLUMES)),
    ("downwardAPI", UnsupportedHint(OTHER_VOLUMES)),
    ("csi", UnsupportedHint(OTHER_VOLUMES)),
    ("ephemeral", UnsupportedHint(OTHER_VOLUMES)),
    ("image", UnsupportedHint(OTHER_VOLUMES)),
    ("iscsi", UnsupportedHint(OTHER_VOLUMES)),
    ("rbd", UnsupportedHint(OTHER_VOLUMES)),
    ("cephfs", UnsupportedHint(OTHER_VOLUMES)),
    ("glusterfs", UnsupportedHint(OTHER_VOLUMES)),
    ("gitRepo", UnsupportedHint(OTHER_VOLUMES)),
    ("fc", UnsupportedHint(OTHER_VOLUMES)),
    ("flexVolume", UnsupportedHint(OTHER_VOLUMES)),
    ("cinder", UnsupportedHint(OTHER_VOLUMES)),
    ("awsElasticBlockStore", UnsupportedHint(OTHER_VOLUMES)),
    ("gcePersistentDisk", UnsupportedHint(OTHER_VOLUMES)),
    ("azureDisk", UnsupportedHint(OTHER_VOLUMES)),
    ("azureFile", UnsupportedHint(OTHER_VOLUMES)),
    ("vsphereVolume", UnsupportedHint(OTHER_VOLUMES)),
];

const EMPTY_DIR: Table = &[("medium", Supported), ("sizeLimit", Supported)];

const HOST_PATH: Table = &[
    ("path", Supported),
    ("type", HarmlessIf(is_directory_type, "\"\" or Directory")),
];

const SECRET_VOLUME: Table = &[
    ("secretName", Supported),
    ("optional", Supported),
    ("defaultMode", UnsupportedHint("secret files are mode 0400")),
    ("items", Unsupported),
];

/// A volume mount, kept with where it was written until the volumes are known.
struct MountAt {
    path: String,
    line: usize,
    name: String,
    read_only: bool,
}

/// The pod-level `securityContext`, which containers inherit.
#[derive(Default, Clone, Copy)]
struct PodSecurity {
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
}

/// Walks a `kind: Pod` document; also returns its `secretKeyRef`s, to check against the
/// input's Secrets.
pub(super) fn parse(ctx: &mut Ctx, doc: &Node) -> Result<(KubePod, Vec<KeyRef>), KubeError> {
    let top = ctx.fields(doc, "", POD)?;
    let (name, labels, annotations) = metadata(ctx, &top)?;
    let Some(spec) = top.get("spec") else {
        return Err(ctx.err(doc.line, "spec", "required: a Pod needs spec.containers"));
    };
    let spec = spec.fields(ctx, SPEC)?;

    let security = match spec.get("securityContext") {
        None => PodSecurity::default(),
        Some(f) if f.is_empty_map() => {
            ctx.harmless.push(f.path);
            PodSecurity::default()
        }
        Some(f) => {
            let s = f.fields(ctx, POD_SECURITY)?;
            PodSecurity {
                run_as_user: id(ctx, &s, "runAsUser")?,
                run_as_group: id(ctx, &s, "runAsGroup")?,
            }
        }
    };

    let mut refs = Vec::new();
    let mut mounts = Vec::new();
    let mut names = HashSet::new();
    let mut init_containers = Vec::new();
    if let Some(list) = spec.get("initContainers") {
        for item in list.seq(ctx)? {
            let c = container(ctx, &item, security, &mut refs, &mut mounts)?;
            unique_container(ctx, &item, &c.name, &mut names)?;
            init_containers.push(c);
        }
    }
    let mut containers = Vec::new();
    let list = spec.get("containers");
    if let Some(list) = &list {
        for item in list.seq(ctx)? {
            let c = container(ctx, &item, security, &mut refs, &mut mounts)?;
            unique_container(ctx, &item, &c.name, &mut names)?;
            containers.push(c);
        }
    }
    if !CONTAINERS.contains(&containers.len()) {
        let line = list.as_ref().map_or(spec.line, |l| l.line);
        return Err(ctx.err(
            line,
            "spec.containers",
            format!(
                "{} containers: a pod has {} to {}",
                containers.len(),
                CONTAINERS.start(),
                CONTAINERS.end()
            ),
        ));
    }

    let volumes = volumes(ctx, &spec)?;
    for m in &mounts {
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            return Err(ctx.err(
                m.line,
                &m.path,
                format!(
                    "no volume named {:?}: add it to spec.volumes, or fix the name",
                    m.name
                ),
            ));
        };
        if matches!(v.source, PodVolumeSource::HostSnapshot { .. }) && !m.read_only {
            return Err(ctx.err(
                m.line,
                &m.path,
                format!(
                    "volume {:?} is a hostPath: read-write hostPath is not supported yet \
                     (mount it readOnly: true for a snapshot taken at pod start)",
                    m.name
                ),
            ));
        }
    }

    let restart_policy = match spec.get("restartPolicy") {
        None => RestartPolicy::Always,
        Some(f) => match f.str(ctx)? {
            "Always" => RestartPolicy::Always,
            "OnFailure" => RestartPolicy::OnFailure { max_retries: None },
            "Never" => RestartPolicy::Never,
            other => {
                return Err(f.err(
                    ctx,
                    format!("{other:?} is not a restart policy: use Always, OnFailure or Never"),
                ));
            }
        },
    };
    let termination_grace_period_s = spec
        .get("terminationGracePeriodSeconds")
        .map(|f| f.int(ctx, 0..=i128::from(u32::MAX)).map(|n| n as u64))
        .transpose()?;
    let hostname = match spec.get("hostname") {
        None => None,
        Some(f) => {
            let h = f.str(ctx)?;
            if !is_dns_label(h) {
                return Err(f.err(ctx, label_message(h)));
            }
            Some(h.to_owned())
        }
    };

    let vm = vm_size(&annotations, &init_containers, &containers).map_err(
        |FieldError { path, message }| {
            let line = top.get("metadata").map_or(doc.line, |m| m.line);
            ctx.err(line, &path, message)
        },
    )?;
    let runtime = match annotations.get(RUNTIME_ANNOTATION) {
        None => None,
        Some(value) => Some(crate::runtime::RuntimeKind::parse(value).ok_or_else(|| {
            let line = top.get("metadata").map_or(doc.line, |m| m.line);
            ctx.err(
                line,
                &format!("metadata.annotations[\"{RUNTIME_ANNOTATION}\"]"),
                format!("{value:?} is not a runtime: give vm or container"),
            )
        })?),
    };
    Ok((
        KubePod {
            runtime,
            name,
            labels,
            annotations,
            hostname,
            restart_policy,
            termination_grace_period_s,
            volumes,
            init_containers,
            containers,
            vm,
        },
        refs,
    ))
}

type Metadata = (String, BTreeMap<String, String>, BTreeMap<String, String>);

/// `metadata`: the name (a DNS-1123 label), labels and annotations.
fn metadata(ctx: &mut Ctx, top: &Fields) -> Result<Metadata, KubeError> {
    let Some(m) = top.get("metadata") else {
        return Err(ctx.err(top.line, "metadata.name", "required"));
    };
    let m = m.fields(ctx, METADATA)?;
    let name = m.required_str(ctx, "name")?;
    if !is_dns_label(name) {
        return Err(ctx.err(
            m.get("name").map_or(m.line, |f| f.line),
            "metadata.name",
            label_message(name),
        ));
    }
    let mut maps = [BTreeMap::new(), BTreeMap::new()];
    for (map, key) in maps.iter_mut().zip(["labels", "annotations"]) {
        if let Some(f) = m.get(key) {
            for (k, v, _) in f.string_map(ctx)? {
                map.insert(k, v.to_owned());
            }
        }
    }
    let [labels, annotations] = maps;
    Ok((name.to_owned(), labels, annotations))
}

fn unique_container(
    ctx: &Ctx,
    item: &Field,
    name: &str,
    names: &mut HashSet<String>,
) -> Result<(), KubeError> {
    if names.insert(name.to_owned()) {
        Ok(())
    } else {
        Err(ctx.err(
            item.line,
            &format!("{}.name", item.path),
            format!(
                "two containers are named {name:?} (init containers included): give each its \
                 own name"
            ),
        ))
    }
}

/// A uid or gid.
fn id(ctx: &Ctx, f: &Fields, name: &str) -> Result<Option<u32>, KubeError> {
    f.get(name)
        .map(|f| f.int(ctx, 0..=i128::from(u32::MAX)).map(|n| n as u32))
        .transpose()
}

fn container(
    ctx: &mut Ctx,
    item: &Field,
    pod_security: PodSecurity,
    refs: &mut Vec<KeyRef>,
    mounts: &mut Vec<MountAt>,
) -> Result<KubeContainer, KubeError> {
    let c = item.fields(ctx, CONTAINER)?;
    let name = c.required_str(ctx, "name")?;
    if !is_dns_label(name) {
        return Err(ctx.err(
            c.get("name").map_or(c.line, |f| f.line),
            &format!("{}.name", c.path),
            label_message(name),
        ));
    }
    let image = c.required_str(ctx, "image")?;
    if image.chars().any(char::is_whitespace) {
        let f = c.get("image").expect("image is present");
        return Err(f.err(ctx, format!("{image:?} is not an image reference")));
    }
    let pull_policy = match c.get("imagePullPolicy") {
        None => PullPolicy::default_for(image),
        Some(f) => match f.str(ctx)? {
            "Always" => PullPolicy::Always,
            "IfNotPresent" => PullPolicy::IfNotPresent,
            "Never" => PullPolicy::Never,
            other => {
                return Err(f.err(
                    ctx,
                    format!("{other:?} is not a pull policy: use Always, IfNotPresent or Never"),
                ));
            }
        },
    };
    let command = c.get("command").map(|f| f.strings(ctx)).transpose()?;
    let args = c.get("args").map(|f| f.strings(ctx)).transpose()?;

    let mut env = Vec::new();
    let mut secret_env = Vec::new();
    if let Some(list) = c.get("env") {
        for item in list.seq(ctx)? {
            let e = item.fields(ctx, ENV)?;
            let env_name = e.required_str(ctx, "name")?;
            if env_name.contains(['=', '\0']) {
                return Err(ctx.err(
                    item.line,
                    &format!("{}.name", item.path),
                    format!("{env_name:?} is not a variable name: it cannot hold '='"),
                ));
            }
            let value = e.str(ctx, "value")?;
            match e.get("valueFrom") {
                None => env.push(format!("{env_name}={}", value.unwrap_or(""))),
                Some(_) if value.is_some() => {
                    return Err(ctx.err(
                        item.line,
                        &item.path,
                        "value and valueFrom are both set: give one",
                    ));
                }
                Some(from) => {
                    let from = from.fields(ctx, VALUE_FROM)?;
                    let Some(r) = from.get("secretKeyRef") else {
                        return Err(ctx.err(
                            from.line,
                            &from.path,
                            "required: secretKeyRef (the one source peapod supports)",
                        ));
                    };
                    let r = r.fields(ctx, SECRET_KEY_REF)?;
                    let secret = secret_name(ctx, &r, "name")?;
                    let key = r.required_str(ctx, "key")?.to_owned();
                    let optional = r.bool(ctx, "optional")?.unwrap_or(false);
                    refs.push(KeyRef {
                        document: ctx.document,
                        line: r.line,
                        path: format!("{}.key", r.path),
                        secret: secret.clone(),
                        key: key.clone(),
                        optional,
                    });
                    secret_env.push(SecretEnv::Key {
                        env_name: env_name.to_owned(),
                        secret,
                        key,
                        optional,
                    });
                }
            }
        }
    }
    if let Some(list) = c.get("envFrom") {
        for item in list.seq(ctx)? {
            let e = item.fields(ctx, ENV_FROM)?;
            let Some(r) = e.get("secretRef") else {
                return Err(ctx.err(item.line, &item.path, "required: secretRef"));
            };
            let r = r.fields(ctx, SECRET_REF)?;
            secret_env.push(SecretEnv::All {
                secret: secret_name(ctx, &r, "name")?,
                optional: r.bool(ctx, "optional")?.unwrap_or(false),
            });
        }
    }
    let unexpanded = command
        .iter()
        .chain(args.iter())
        .flatten()
        .chain(env.iter())
        .any(|s| has_var_reference(s));
    if unexpanded {
        ctx.warnings.push(format!(
            "document {}: {}: peapod does not expand $(VAR) references in command, args and \
             env: they are passed as written",
            ctx.document, c.path
        ));
    }

    let working_dir = match c.get("workingDir") {
        None => None,
        Some(f) => {
            let dir = f.str(ctx)?;
            abs_path(ctx, &f, dir)?;
            Some(dir.to_owned())
        }
    };

    let mut ports = Vec::new();
    if let Some(list) = c.get("ports") {
        for item in list.seq(ctx)? {
            let p = item.fields(ctx, PORT)?;
            let port = |name: &str| {
                p.get(name)
                    .map(|f| f.int(ctx, 1..=65535).map(|n| n as u16))
                    .transpose()
            };
            let Some(container_port) = port("containerPort")? else {
                return Err(ctx.err(p.line, &format!("{}.containerPort", p.path), "required"));
            };
            let host_port = port("hostPort")?;
            let host_ip = match p.get("hostIP") {
                None => None,
                Some(f) => {
                    let ip = f.str(ctx)?;
                    if ip.parse::<IpAddr>().is_err() {
                        return Err(f.err(ctx, format!("{ip:?} is not an IP address")));
                    }
                    Some(ip.to_owned())
                }
            };
            let protocol = match p.get("protocol") {
                None => PortProtocol::Tcp,
                Some(f) => match f.str(ctx)? {
                    "TCP" => PortProtocol::Tcp,
                    "UDP" => PortProtocol::Udp,
                    "SCTP" => return Err(f.err(ctx, "SCTP is not supported by peapod")),
                    other => {
                        return Err(
                            f.err(ctx, format!("{other:?} is not a protocol: use TCP or UDP"))
                        );
                    }
                },
            };
            ports.push(PortSpec {
                container_port,
                host_port,
                host_ip,
                protocol,
            });
        }
    }

    let (mut memory_limit_bytes, mut cpu_limit_millis) = (None, None);
    if let Some(r) = c.get("resources") {
        if r.is_empty_map() {
            ctx.harmless.push(r.path.clone());
        } else {
            let r = r.fields(ctx, RESOURCES)?;
            for list in ["limits", "requests"] {
                let Some(l) = r.get(list) else { continue };
                let l = l.fields(ctx, RESOURCE_LIST)?;
                let cpu = quantity_field(ctx, &l, "cpu", quantity::cpu_millis)?;
                let memory = quantity_field(ctx, &l, "memory", quantity::memory_bytes)?;
                if list == "limits" {
                    (cpu_limit_millis, memory_limit_bytes) = (cpu, memory);
                }
            }
        }
    }

    let (mut run_as_user, mut run_as_group) = (pod_security.run_as_user, pod_security.run_as_group);
    let (mut read_only_root, mut privileged) = (false, false);
    if let Some(s) = c.get("securityContext") {
        if s.is_empty_map() {
            ctx.harmless.push(s.path.clone());
        } else {
            let s = s.fields(ctx, CONTAINER_SECURITY)?;
            run_as_user = id(ctx, &s, "runAsUser")?.or(run_as_user);
            run_as_group = id(ctx, &s, "runAsGroup")?.or(run_as_group);
            read_only_root = s.bool(ctx, "readOnlyRootFilesystem")?.unwrap_or(false);
            privileged = s.bool(ctx, "privileged")?.unwrap_or(false);
        }
    }

    let mut volume_mounts = Vec::new();
    if let Some(list) = c.get("volumeMounts") {
        let mut paths = HashSet::new();
        for item in list.seq(ctx)? {
            let m = item.fields(ctx, MOUNT)?;
            let name = m.required_str(ctx, "name")?;
            let mount_path = m.required_str(ctx, "mountPath")?;
            let f = m.get("mountPath").expect("mountPath is present");
            abs_path(ctx, &f, mount_path)?;
            if !paths.insert(mount_path) {
                return Err(f.err(ctx, format!("{mount_path} is mounted twice")));
            }
            let read_only = m.bool(ctx, "readOnly")?.unwrap_or(false);
            let sub_path = match m.get("subPath") {
                None => None,
                Some(f) => {
                    let sub = f.str(ctx)?;
                    let relative = Path::new(sub)
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                    if !relative || sub.is_empty() {
                        return Err(f.err(
                            ctx,
                            format!(
                                "{sub:?} must be a relative path inside the volume, without '..'"
                            ),
                        ));
                    }
                    Some(sub.to_owned())
                }
            };
            mounts.push(MountAt {
                path: item.path.clone(),
                line: item.line,
                name: name.to_owned(),
                read_only,
            });
            volume_mounts.push(VolumeMount {
                name: name.to_owned(),
                mount_path: mount_path.into(),
                read_only,
                sub_path,
            });
        }
    }

    Ok(KubeContainer {
        name: name.to_owned(),
        image: image.to_owned(),
        pull_policy,
        command,
        args,
        env,
        secret_env,
        working_dir,
        ports,
        memory_limit_bytes,
        cpu_limit_millis,
        run_as_user,
        run_as_group,
        read_only_root,
        privileged,
        volume_mounts,
    })
}

/// A Secret's name in a reference (a DNS-1123 subdomain).
fn secret_name(ctx: &Ctx, f: &Fields, field: &str) -> Result<String, KubeError> {
    let name = f.required_str(ctx, field)?;
    if !is_dns_subdomain(name) {
        let line = f.get(field).map_or(f.line, |f| f.line);
        return Err(ctx.err(
            line,
            &format!("{}.{field}", f.path),
            format!("{name:?} is not a Secret name (lowercase letters, digits, '-' and '.')"),
        ));
    }
    Ok(name.to_owned())
}

fn abs_path(ctx: &Ctx, f: &Field, path: &str) -> Result<(), KubeError> {
    crate::protocol::validate_abs_path("path", Path::new(path)).map_err(|_| {
        f.err(
            ctx,
            format!("{path:?} must be an absolute path without '.' or '..'"),
        )
    })
}

/// A quantity field (given as a string or a number).
fn quantity_field(
    ctx: &Ctx,
    f: &Fields,
    name: &str,
    parse: fn(&str) -> Option<u64>,
) -> Result<Option<u64>, KubeError> {
    let Some(f) = f.get(name) else {
        return Ok(None);
    };
    let text = match &f.node.value {
        Value::Int(i) => i.to_string(),
        Value::Float(x) => x.to_string(),
        _ => f.str(ctx)?.to_owned(),
    };
    match parse(&text) {
        Some(n) => Ok(Some(n)),
        None => Err(f.err(
            ctx,
            format!("{text:?} is not a quantity: use {}", quantity::FORMAT),
        )),
    }
}

fn volumes(ctx: &mut Ctx, spec: &Fields) -> Result<Vec<PodVolume>, KubeError> {
    let Some(list) = spec.get("volumes") else {
        return Ok(Vec::new());
    };
    let mut out: Vec<PodVolume> = Vec::new();
    let mut seen = HashMap::new();
    for item in list.seq(ctx)? {
        let v = item.fields(ctx, VOLUME)?;
        let name = v.required_str(ctx, "name")?;
        let name_line = v.get("name").map_or(v.line, |f| f.line);
        let name_path = format!("{}.name", v.path);
        if !is_dns_label(name) {
            return Err(ctx.err(name_line, &name_path, label_message(name)));
        }
        if let Some(first) = seen.insert(name.to_owned(), item.path.clone()) {
            return Err(ctx.err(
                name_line,
                &name_path,
                format!("{first} is named {name:?} too: give each volume its own name"),
            ));
        }
        let sources: Vec<Field> = ["emptyDir", "hostPath", "secret"]
            .into_iter()
            .filter_map(|k| v.get(k))
            .collect();
        let [source] = sources.as_slice() else {
            return Err(ctx.err(
                v.line,
                &item.path,
                format!(
                    "give exactly one of emptyDir, hostPath or secret ({} given)",
                    sources.len()
                ),
            ));
        };
        let kind = source.path.rsplit('.').next().unwrap_or_default();
        let source = match kind {
            "emptyDir" => {
                let e = source.fields(ctx, EMPTY_DIR)?;
                let memory = match e.get("medium") {
                    None => false,
                    Some(f) => match f.str(ctx)? {
                        "" => false,
                        "Memory" => true,
                        other => {
                            return Err(f.err(
                                ctx,
                                format!("{other:?} is not supported: use \"\" or Memory"),
                            ));
                        }
                    },
                };
                PodVolumeSource::EmptyDir {
                    memory,
                    size_limit_bytes: quantity_field(ctx, &e, "sizeLimit", quantity::memory_bytes)?,
                }
            }
            "hostPath" => {
                let h = source.fields(ctx, HOST_PATH)?;
                let path = h.required_str(ctx, "path")?;
                abs_path(ctx, &h.get("path").expect("path is present"), path)?;
                PodVolumeSource::HostSnapshot {
                    source: path.into(),
                    disk: format!("volumes/{name}.erofs").into(),
                }
            }
            _ => {
                let s = source.fields(ctx, SECRET_VOLUME)?;
                PodVolumeSource::Secret {
                    secret_name: secret_name(ctx, &s, "secretName")?,
                    optional: s.bool(ctx, "optional")?.unwrap_or(false),
                }
            }
        };
        out.push(PodVolume {
            name: name.to_owned(),
            source,
        });
    }
    Ok(out)
}

/// Whether `s` holds a Kubernetes variable reference, `$(NAME)` with NAME a C identifier
/// (`$(cat f)`, a shell's command substitution, is not one).
fn has_var_reference(s: &str) -> bool {
    s.match_indices("$(").any(|(i, _)| {
        let rest = &s[i + 2..];
        match rest.find(')') {
            Some(end) => {
                let name = &rest[..end];
                name.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            None => false,
        }
    })
}
