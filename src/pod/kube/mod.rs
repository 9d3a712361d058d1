//! Kubernetes `v1` `Pod` and `Secret` documents (`peapod pod apply -f`), parsed and validated
//! at the edge into an image-unresolved description that the CLI turns into a
//! [`PodSpec`](super::PodSpec) once it has pulled the images.
//!
//! Each document is parsed to a generic YAML tree first ([`node`]), then walked against a
//! table of the fields of each Kubernetes object. Every field falls in one of three classes:
//!
//! - **supported**: read and honoured;
//! - **harmless** in a pod that has a VM of its own (`status`, `metadata.uid`,
//!   `spec.dnsPolicy: ClusterFirst`, `spec.tolerations`, a container's
//!   `terminationMessagePath`, `resources: {}`, ...): accepted and listed once, in one
//!   warning per document;
//! - **not honoured** (probes, `lifecycle`, `hostNetwork: true`, privileged containers,
//!   capabilities, volumes other than emptyDir, secret and read-only hostPath, ...): an error
//!   `spec.containers[0].livenessProbe: not supported by peapod`.
//!
//! Anything else is an error too, with the closest field name:
//! `spec.containers[0].comand: unknown field (did you mean command?)`. Every error names the
//! document (1-based), the line where the parser knows it, and the field's path. Secret values
//! never appear in a message: errors name keys and the kind of a node, never its value.
//!
//! The YAML parser is `serde-saphyr`: `serde_yaml` is deprecated upstream, and of the
//! maintained crates it is pure Rust (no libyaml translated to `unsafe` Rust, as
//! `serde_yaml_ng` and `serde_norway` are), parses multi-document input, reports line and
//! column for syntax errors, hands back the line of every node (its `Spanned`), so errors
//! about valid YAML point at the line too, and has budgets against alias bombs. It is read as
//! YAML 1.2 core (`yes` and `on` are strings, not booleans).
//!
//! The VM's size comes from the `peapod.dev/vm-cpus` and `peapod.dev/vm-memory`
//! annotations, else from the containers' limits: see [`vm_size`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::spec::{PodVolume, PortSpec, RestartPolicy, SecretEnv, VmSize, VolumeMount};

mod node;
mod pod;
mod quantity;
mod secret;
#[cfg(test)]
mod tests;

pub use quantity::{cpu_millis, memory_bytes};

/// The annotation that sets the pod VM's vCPUs (1 to 32).
pub const VM_CPUS_ANNOTATION: &str = "peapod.dev/vm-cpus";
/// The annotation that sets the pod VM's memory (a quantity, 64Mi to 64Gi).
pub const VM_MEMORY_ANNOTATION: &str = "peapod.dev/vm-memory";
/// The annotation that picks the pod's runtime: `vm` (a microVM per pod) or `container`
/// (plain containers on the host's kernel); without it, `pod apply --runtime` decides.
pub const RUNTIME_ANNOTATION: &str = "peapod.dev/runtime";
/// Guest memory added to the containers' memory limits for the guest kernel and agent.
pub const VM_MEMORY_OVERHEAD_MIB: u64 = 128;
/// Guest memory of a pod none of whose containers has a memory limit.
pub const VM_DEFAULT_MEMORY_MIB: u64 = 256;

/// The Pods and Secrets of one apply, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeDocuments {
    pub pods: Vec<KubePod>,
    pub secrets: Vec<KubeSecret>,
    /// One line per document that had harmless fields, each listing them; and notes on
    /// what peapod does differently (such as `$(VAR)` references left unexpanded).
    pub warnings: Vec<String>,
}

/// A `kind: Secret` document. Its `Debug` shows the keys and sizes, never the values.
#[derive(Clone, PartialEq, Eq)]
pub struct KubeSecret {
    pub name: String,
    /// `stringData` over base64-decoded `data`.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for KubeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted<'a>(&'a BTreeMap<String, Vec<u8>>);
        impl fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut map = f.debug_map();
                for (k, v) in self.0 {
                    map.entry(k, &format_args!("<redacted, {} bytes>", v.len()));
                }
                map.finish()
            }
        }
        f.debug_struct("KubeSecret")
            .field("name", &self.name)
            .field("data", &Redacted(&self.data))
            .finish()
    }
}

/// A `kind: Pod` document, images not resolved yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePod {
    /// `metadata.name`, a DNS-1123 label.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.hostname`; the caller defaults it (to the pod's name, as Kubernetes does).
    pub hostname: Option<String>,
    /// `spec.restartPolicy`, `Always` when absent (Kubernetes' default).
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_s: Option<u64>,
    /// `hostPath` volumes become [`HostSnapshot`](super::spec::PodVolumeSource::HostSnapshot)s
    /// with `disk` = `volumes/<name>.erofs`.
    pub volumes: Vec<PodVolume>,
    pub init_containers: Vec<KubeContainer>,
    pub containers: Vec<KubeContainer>,
    /// From [`vm_size`].
    pub vm: VmSize,
    /// From the [`RUNTIME_ANNOTATION`], when the pod has one.
    pub runtime: Option<crate::runtime::RuntimeKind>,
}

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the store lacks the image.
    IfNotPresent,
    /// Never pull: the store must have the image.
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `Always` for an image without a tag or tagged `:latest` (and no
    /// digest), else `IfNotPresent`.
    pub fn default_for(image: &str) -> PullPolicy {
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        let last = image.rsplit('/').next().unwrap_or(image);
        match last.split_once(':') {
            Some((_, tag)) if tag != "latest" => PullPolicy::IfNotPresent,
            _ => PullPolicy::Always,
        }
    }
}

/// One container (or init container) of a [`KubePod`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeContainer {
    /// A DNS-1123 label, unique across the pod's init and regular containers.
    pub name: String,
    /// The image reference as written.
    pub image: String,
    /// As written, else [`PullPolicy::default_for`] the image.
    pub pull_policy: PullPolicy,
    /// Replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd.
    pub args: Option<Vec<String>>,
    /// `NAME=value` from `env[].value` (an absent value is empty, as in Kubernetes).
    pub env: Vec<String>,
    /// `env[].valueFrom.secretKeyRef` and `envFrom[].secretRef`.
    pub secret_env: Vec<SecretEnv>,
    pub working_dir: Option<String>,
    pub ports: Vec<PortSpec>,
    /// `resources.limits.memory`.
    pub memory_limit_bytes: Option<u64>,
    /// `resources.limits.cpu`.
    pub cpu_limit_millis: Option<u64>,
    /// The container's `securityContext.runAsUser`, else the pod's.
    pub run_as_user: Option<u32>,
    /// The container's `securityContext.runAsGroup`, else the pod's.
    pub run_as_group: Option<u32>,
    pub read_only_root: bool,
    /// `securityContext.privileged` (a container's only; Kubernetes has no pod-level one).
    pub privileged: bool,
    pub volume_mounts: Vec<VolumeMount>,
}

/// Why an apply's documents were refused.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("YAML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },

    /// Valid YAML that is not a valid Pod or Secret. `document` counts from 1; `path` is the
    /// field (`spec.containers[0].image`), empty for the document as a whole.
    #[error("{}", fmt_invalid(*.document, *.line, .path, .message))]
    Invalid {
        document: usize,
        line: Option<usize>,
        path: String,
        message: String,
    },

    #[error("no Pod or Secret documents found: the input is empty")]
    Empty,
}

fn fmt_invalid(document: usize, line: Option<usize>, path: &str, message: &str) -> String {
    let at = match line {
        Some(line) => format!("document {document} (line {line})"),
        None => format!("document {document}"),
    };
    if path.is_empty() {
        format!("{at}: {message}")
    } else {
        format!("{at}: {path}: {message}")
    }
}

/// A field that is wrong, from [`vm_size`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// The pod VM's size.
///
/// - `peapod.dev/vm-cpus` (1 to 32) and `peapod.dev/vm-memory` (a quantity, 64Mi to 64Gi),
///   each when present, win.
/// - Otherwise the containers' limits decide, as the kubelet sizes a pod: the sum over the
///   regular containers, or the largest init container's limit when that is more (init
///   containers run one at a time, before the others). vCPUs are that cpu rounded up to whole
///   vCPUs, at least 1. Memory is that memory plus 128 MiB for the guest kernel and agent,
///   rounded up to a MiB, or 256 MiB when no container has a memory limit. A container
///   without a limit adds nothing.
pub fn vm_size(
    annotations: &BTreeMap<String, String>,
    init_containers: &[KubeContainer],
    containers: &[KubeContainer],
) -> Result<VmSize, FieldError> {
    fn effective(
        init: &[KubeContainer],
        regular: &[KubeContainer],
        limit: fn(&KubeContainer) -> Option<u64>,
    ) -> Option<u64> {
        let sum = regular.iter().filter_map(limit).reduce(u64::saturating_add);
        let init_max = init.iter().filter_map(limit).max();
        sum.max(init_max)
    }
    let annotation = |key: &str| {
        annotations
            .get(key)
            .map(|v| (v.as_str(), format!("metadata.annotations[\"{key}\"]")))
    };
    let cpus = match annotation(VM_CPUS_ANNOTATION) {
        Some((value, path)) => match value.parse::<u8>() {
            Ok(n) if super::spec::CPUS.contains(&n) => n,
            _ => {
                return Err(FieldError {
                    path,
                    message: format!(
                        "{value:?} is not a vCPU count: use a whole number from {} to {}",
                        super::spec::CPUS.start(),
                        super::spec::CPUS.end()
                    ),
                });
            }
        },
        None => {
            let millis = effective(init_containers, containers, |c| c.cpu_limit_millis)
                .unwrap_or(0)
                .div_ceil(1000)
                .max(1);
            match u8::try_from(millis) {
                Ok(n) if super::spec::CPUS.contains(&n) => n,
                _ => {
                    return Err(FieldError {
                        path: "spec.containers[].resources.limits.cpu".into(),
                        message: format!(
                            "the limits add up to {millis} vCPUs, more than a pod VM's {}: lower \
                             them, or set the {VM_CPUS_ANNOTATION} annotation",
                            super::spec::CPUS.end()
                        ),
                    });
                }
            }
        }
    };
    let memory_mib = match annotation(VM_MEMORY_ANNOTATION) {
        Some((value, path)) => {
            let mib = memory_bytes(value).map(|b| b.div_ceil(1 << 20));
            match mib {
                Some(mib) if super::spec::MEMORY_MIB.contains(&mib) => mib,
                _ => {
                    return Err(FieldError {
                        path,
                        message: format!(
                            "{value:?} is not a pod VM's memory: use a quantity from 64Mi to \
                             64Gi ({})",
                            quantity::FORMAT
                        ),
                    });
                }
            }
        }
        None => match effective(init_containers, containers, |c| c.memory_limit_bytes) {
            None => VM_DEFAULT_MEMORY_MIB,
            Some(bytes) => {
                let mib = bytes.div_ceil(1 << 20) + VM_MEMORY_OVERHEAD_MIB;
                if !super::spec::MEMORY_MIB.contains(&mib) {
                    return Err(FieldError {
                        path: "spec.containers[].resources.limits.memory".into(),
                        message: format!(
                            "the limits need a {mib} MiB VM, more than a pod VM's {} MiB: \
                             lower them",
                            super::spec::MEMORY_MIB.end()
                        ),
                    });
                }
                mib
            }
        },
    };
    Ok(VmSize { cpus, memory_mib })
}

/// Parses one apply's multi-document YAML into its Pods and Secrets, validated.
///
/// Empty documents are skipped. A `secretKeyRef` to a Secret of the same input must name
/// one of its keys (unless `optional`); references to Secrets not in the input are left to
/// the caller, which may have them stored.
pub fn parse_documents(text: &str) -> Result<KubeDocuments, KubeError> {
    let docs = node::parse_yaml(text)?;
    let mut out = KubeDocuments::default();
    let mut key_refs = Vec::new();
    let mut secret_docs = HashMap::new();
    let mut pod_docs = HashMap::new();
    for (i, doc) in docs.iter().enumerate() {
        let Some(doc) = doc else { continue };
        let mut ctx = node::Ctx {
            document: i + 1,
            harmless: Vec::new(),
            warnings: Vec::new(),
        };
        let (api_version, kind) = node::api_version_and_kind(&ctx, doc)?;
        let what = match (api_version, kind) {
            (Some("v1"), Some("Pod")) => {
                let (pod, refs) = pod::parse(&mut ctx, doc)?;
                if pod_docs.insert(pod.name.clone(), ctx.document).is_some() {
                    return Err(ctx.err(
                        doc.line,
                        "metadata.name",
                        format!("a Pod named {:?} is already in this input", pod.name),
                    ));
                }
                let what = format!("pod {}", pod.name);
                key_refs.extend(refs);
                out.pods.push(pod);
                what
            }
            (Some("v1"), Some("Secret")) => {
                let secret = secret::parse(&mut ctx, doc)?;
                if secret_docs
                    .insert(secret.name.clone(), out.secrets.len())
                    .is_some()
                {
                    return Err(ctx.err(
                        doc.line,
                        "metadata.name",
                        format!("a Secret named {:?} is already in this input", secret.name),
                    ));
                }
                let what = format!("secret {}", secret.name);
                out.secrets.push(secret);
                what
            }
            (None, _) => return Err(ctx.err(doc.line, "apiVersion", "required (v1)")),
            (_, None) => return Err(ctx.err(doc.line, "kind", "required (Pod or Secret)")),
            (Some(v), Some(k)) => {
                return Err(ctx.err(
                    doc.line,
                    "",
                    format!(
                        "kind {k:?} of apiVersion {v:?} is not supported: peapod applies \
                         apiVersion v1 kind Pod and kind Secret"
                    ),
                ));
            }
        };
        if !ctx.harmless.is_empty() {
            out.warnings.push(format!(
                "document {} ({what}): ignored, as they mean nothing to a pod in its own VM: {}",
                ctx.document,
                ctx.harmless.join(", ")
            ));
        }
        out.warnings.append(&mut ctx.warnings);
    }
    for r in key_refs {
        let Some(&s) = secret_docs.get(&r.secret) else {
            continue;
        };
        if !r.optional && !out.secrets[s].data.contains_key(&r.key) {
            return Err(KubeError::Invalid {
                document: r.document,
                line: Some(r.line),
                path: r.path,
                message: format!(
                    "Secret {:?} in this input has no key {:?} (add it, or set optional: true)",
                    r.secret, r.key
                ),
            });
        }
    }
    if out.pods.is_empty() && out.secrets.is_empty() {
        return Err(KubeError::Empty);
    }
    Ok(out)
}

/// A `secretKeyRef`, checked once every Secret of the input is known.
struct KeyRef {
    document: usize,
    line: usize,
    path: String,
    secret: String,
    key: String,
    optional: bool,
}

/// Whether `s` is a DNS-1123 label: 1 to 63 of `a-z`, `0-9`, `-`, starting and ending with
/// a letter or digit.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (labels joined by `.`, at most 253 in all).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The message for a name that is not a DNS-1123 label.
fn label_message(name: &str) -> String {
    format!(
        "{name:?} is not a valid name: use 1 to 63 lowercase letters, digits or '-', starting \
         and ending with a letter or digit (a DNS-1123 label)"
    )
}
