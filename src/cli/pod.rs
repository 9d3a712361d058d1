//! `peapod pod apply`: pods and secrets from Kubernetes `v1` YAML, each pod in its own VM.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::pods;
use crate::image::store::Store;
use crate::pod::kube::{KubeContainer, KubeDocuments, KubePod, PullPolicy, parse_documents};
use crate::pod::spec::{ContainerConfig, NetworkMode, PodSpec, PodVolumeSource, SecretEnv};
use crate::protocol::{CpuMax, Resources};
use crate::runtime::RuntimeKind;
use crate::secret::{Secret, SecretStore};
use crate::supervisor::api::ApiRequest;

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Create the Pods and Secrets of Kubernetes v1 YAML (multi-document; `-` reads stdin).
    /// Each pod starts detached in its own VM; `peapod ps`, `logs`, `exec`, `stop`, `rm`
    /// work on it
    #[command(after_help = "Examples:
  peapod pod apply -f web.yaml
  kubectl run web --image=busybox --dry-run=client -o yaml | peapod pod apply -f -

Fields peapod does not honour (probes, hostNetwork, ...) are errors naming the field;
fields that mean nothing in a VM pod (status, dnsPolicy, ...) are listed once as a warning.")]
    Apply(ApplyArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The YAML file, or - for stdin
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// The pods' network: peapod (the default bridge), none, or a CNI network's name
    #[arg(
        long,
        value_name = "NETWORK",
        env = "PEAPOD_NETWORK",
        default_value = NetworkMode::DEFAULT_NETWORK
    )]
    network: String,
    #[command(flatten)]
    guest: pods::GuestArgs,
}

pub fn run(cmd: PodCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PodCommand::Apply(args) => apply(args),
    }
}

fn read_input(file: &std::path::Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == std::path::Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the YAML from stdin")?;
    } else {
        text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(text)
}

fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let network = NetworkMode::parse(&args.network)?;
    let text = read_input(&args.file)?;
    let docs = parse_documents(&text).with_context(|| format!("{}", args.file.display()))?;
    for warning in &docs.warnings {
        eprintln!("peapod: warning: {warning}");
    }
    let store = args.guest.open_store()?;
    let secrets = SecretStore::from_env();

    // Everything is checked before anything is created: images, secrets, specs.
    let mut specs = Vec::new();
    let mut artifacts = std::collections::BTreeMap::new();
    for pod in &docs.pods {
        let runtime = pod.runtime.unwrap_or(args.guest.runtime);
        if let std::collections::btree_map::Entry::Vacant(e) = artifacts.entry(runtime) {
            e.insert(args.guest.prepare_runtime(runtime)?);
        }
        let spec = pod_spec(&store, pod, &network, runtime)
            .with_context(|| format!("pod {}", pod.name))?;
        check_secrets(&spec, &docs, &secrets).with_context(|| format!("pod {}", pod.name))?;
        specs.push(spec);
    }
    let registry = pods::registry();
    let taken: Vec<String> = registry
        .list()?
        .into_iter()
        .map(|v| v.record.name)
        .collect();
    for spec in &specs {
        if taken.contains(&spec.name) {
            bail!(
                "pod {} exists already: remove it first (peapod rm -f {})",
                spec.name,
                spec.name
            );
        }
    }

    // Secrets first (pods read them at start), then the pods; a failure undoes this apply.
    let mut created_secrets = Vec::new();
    let mut created_pods = Vec::new();
    let outcome = (|| -> anyhow::Result<Vec<(String, String, Option<String>)>> {
        for s in &docs.secrets {
            let mut secret = Secret::new(&s.name);
            secret.data = s.data.clone();
            let existed = secrets.get(&s.name).is_ok();
            secrets
                .create(&secret, true)
                .with_context(|| format!("secret {}", s.name))?;
            if !existed {
                created_secrets.push(s.name.clone());
            }
            println!("secret/{}", s.name);
        }
        let mut started = Vec::new();
        for spec in specs {
            let name = spec.name.clone();
            let vm = artifacts.get(&spec.runtime).cloned().flatten();
            // A host pod's supervisor answers once the pod is up (see `peapod run`).
            let early: &[ApiRequest] = match spec.runtime {
                RuntimeKind::Container => &[ApiRequest::Start],
                RuntimeKind::Vm => &[],
            };
            let (record, opened) = pods::launch(&registry, spec, vm, early)?;
            created_pods.push(record.id.clone());
            let start = match opened {
                Some(mut client) => client.answer_ok(),
                None => {
                    let view = registry.get(&record.id)?;
                    pods::connect(&registry, &view)?.expect_ok(&ApiRequest::Start)
                }
            };
            // A failing init container fails its pod, which stays for `ps -a` and `logs`.
            let failure = start.err().map(|e| e.to_string());
            started.push((name, record.id.to_string(), failure));
        }
        Ok(started)
    })();
    match outcome {
        Ok(started) => {
            let mut failed = false;
            for (name, id, failure) in started {
                match failure {
                    None => println!("pod/{name} {id}"),
                    Some(why) => {
                        failed = true;
                        println!("pod/{name} {id}");
                        eprintln!("peapod: pod {name} failed: {why}");
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(e) => {
            for id in created_pods {
                if let Ok(view) = registry.get(&id) {
                    if let Ok(mut c) = pods::connect(&registry, &view) {
                        let _ = c.expect_state(&ApiRequest::Stop { timeout_s: 0 });
                    }
                    registry.wait_unsupervised(&id, std::time::Duration::from_secs(10));
                }
                let _ = registry.remove(&id);
            }
            for name in created_secrets {
                let _ = secrets.remove(&name);
            }
            Err(e)
        }
    }
}

/// Every secret a pod refers to (not optionally) is in this apply or in the store.
fn check_secrets(
    spec: &PodSpec,
    docs: &KubeDocuments,
    secrets: &SecretStore,
) -> anyhow::Result<()> {
    let mut required = Vec::new();
    for v in &spec.volumes {
        if let PodVolumeSource::Secret {
            secret_name,
            optional: false,
        } = &v.source
        {
            required.push(secret_name.as_str());
        }
    }
    for c in spec.init_containers.iter().chain(&spec.containers) {
        for e in &c.secret_env {
            match e {
                SecretEnv::Key {
                    secret,
                    optional: false,
                    ..
                }
                | SecretEnv::All {
                    secret,
                    optional: false,
                } => required.push(secret.as_str()),
                _ => {}
            }
        }
    }
    for name in required {
        if docs.secrets.iter().any(|s| s.name == name) {
            continue;
        }
        secrets.get(name).with_context(|| {
            format!("it needs secret {name}: add a Secret document or `peapod secret create`")
        })?;
    }
    Ok(())
}

/// The pod's spec: images resolved (pulled as the pull policy says), processes from the
/// images' configs with `command`/`args`/`env`/`workingDir`/`runAsUser` laid over them.
fn pod_spec(
    store: &Store,
    pod: &KubePod,
    network: &NetworkMode,
    runtime: RuntimeKind,
) -> anyhow::Result<PodSpec> {
    let containers = |list: &[KubeContainer]| -> anyhow::Result<Vec<ContainerConfig>> {
        list.iter().map(|c| container(store, c, runtime)).collect()
    };
    Ok(PodSpec {
        name: pod.name.clone(),
        hostname: pod.hostname.clone().unwrap_or_else(|| pod.name.clone()),
        vm: pod.vm,
        containers: containers(&pod.containers)?,
        auto_remove: false,
        init_containers: containers(&pod.init_containers)?,
        restart_policy: pod.restart_policy,
        termination_grace_period_s: pod.termination_grace_period_s,
        volumes: pod.volumes.clone(),
        labels: pod.labels.clone(),
        annotations: pod.annotations.clone(),
        network: network.clone(),
        runtime,
    })
}

fn container(
    store: &Store,
    c: &KubeContainer,
    runtime: RuntimeKind,
) -> anyhow::Result<ContainerConfig> {
    let builtin = c.image == crate::image::builtin::DEFAULT_IMAGE;
    let present = crate::image::open(store, &c.image).is_ok();
    let pull = match c.pull_policy {
        _ if builtin => false,
        PullPolicy::Never => false,
        PullPolicy::IfNotPresent => !present,
        PullPolicy::Always => true,
    };
    if pull && let Err(e) = super::run::pull(store, &c.image) {
        if !present {
            return Err(e.context(format!("container {}", c.name)));
        }
        eprintln!(
            "peapod: warning: container {}: cannot pull {} ({e:#}); using the stored image",
            c.name, c.image
        );
    }
    let user = match (c.run_as_user, c.run_as_group) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(g)) => Some(format!("0:{g}")),
        (None, None) => None,
    };
    let overrides = crate::image::process::Overrides {
        entrypoint: c.command.clone(),
        command: c.args.clone().unwrap_or_default(),
        env: c.env.clone(),
        workdir: c.working_dir.clone(),
        user,
    };
    let (resolved, process) = crate::image::prepare_pod_image(store, &c.image, &overrides, runtime)
        .with_context(|| format!("container {}: image {}", c.name, c.image))?;
    Ok(ContainerConfig {
        name: c.name.clone(),
        image: c.image.clone(),
        image_digest: resolved.manifest_digest.to_string(),
        disk: resolved.root.clone(),
        process: process.into_spec(false, false),
        resources: Resources {
            memory_max: c.memory_limit_bytes,
            cpu: c.cpu_limit_millis.map(|millis| CpuMax {
                quota_us: millis.saturating_mul(100),
                period_us: 100_000,
            }),
            pids_max: None,
        },
        volumes: Vec::new(),
        volume_mounts: c.volume_mounts.clone(),
        secret_env: c.secret_env.clone(),
        ports: c.ports.clone(),
        read_only_root: c.read_only_root,
        privileged: c.privileged,
    })
}
