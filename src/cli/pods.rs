//! What the pod verbs share: the registry, finding a pod by name or id prefix, reaching its
//! supervisor, and how a pod's status and age read in a table.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::pod::layout::PodDirs;
use crate::pod::registry::{PodView, Registry};
use crate::pod::state::PodStatus;
use crate::runtime::RuntimeKind;
use crate::supervisor::api::{ApiClient, ApiRequest};

pub fn registry() -> Registry {
    Registry::new(PodDirs::from_env())
}

/// The pod `query` names (full id, name, or a unique id prefix).
pub fn resolve(registry: &Registry, query: &str) -> anyhow::Result<PodView> {
    Ok(registry.resolve(query)?)
}

/// A handshaken connection to the pod's supervisor.
pub fn connect(registry: &Registry, view: &PodView) -> anyhow::Result<ApiClient> {
    let socket = registry.dirs().socket_path(&view.record.id);
    ApiClient::connect(&socket).with_context(|| format!("pod {}", view.record.name))
}

/// Whether the pod's supervisor still runs it.
pub fn is_live(view: &PodView) -> bool {
    matches!(view.state.status, PodStatus::Created | PodStatus::Running)
}

/// "5 seconds", "3 minutes", "2 hours", "4 days", as docker words ages.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        0 => return "Less than a second".into(),
        1..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

pub fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// The STATUS column: `Up 5 seconds`, `Exited (3) 2 minutes ago`, `Created`, `Failed`.
pub fn status_column(view: &PodView) -> String {
    let s = &view.state;
    match &s.status {
        PodStatus::Running => match s.started_at {
            Some(t) => format!("Up {}", human_duration(since(t))),
            None => "Running".into(),
        },
        PodStatus::Exited { code } => match s.finished_at {
            Some(t) => format!("Exited ({code}) {} ago", human_duration(since(t))),
            None => format!("Exited ({code})"),
        },
        other => other.to_string(),
    }
}

/// Runs `each` on every name given to a verb that takes several (`stop`, `rm`, `secret rm`):
/// prints the name when it worked, the error when not, and goes on; exits 125 when any
/// failed, as docker does.
pub fn for_each_name(
    names: &[String],
    mut each: impl FnMut(&str) -> anyhow::Result<()>,
) -> ExitCode {
    let mut failed = false;
    for name in names {
        match each(name) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("peapod: error: {}", super::error_message(&e));
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(super::EXIT_PEAPOD_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

/// A pod VM's guest kernel and agent initramfs.
pub type VmArtifacts = (std::path::PathBuf, std::path::PathBuf);

/// The flags of the verbs that create pods (`run`, `pod apply`): the runtime, and (hidden)
/// what a pod VM boots and where images are.
#[derive(Debug, clap::Args)]
pub struct GuestArgs {
    /// The guest kernel [default: what kernel/build.sh built, or PEAPOD_GUEST_KERNEL]
    #[arg(long, hide = true)]
    pub kernel: Option<std::path::PathBuf>,
    /// The agent initramfs [default: PEAPOD_AGENT_INITRAMFS, else the one
    /// rootfs/build-agent-initramfs.sh built]
    #[arg(long, hide = true)]
    pub initrd: Option<std::path::PathBuf>,
    /// The image store
    #[arg(long, env = "PEAPOD_ROOT", default_value = crate::image::store::DEFAULT_ROOT, hide = true)]
    pub store: std::path::PathBuf,
    /// The isolation model: vm (a microVM per pod) or container (plain containers on the
    /// host's kernel: namespaces, cgroups, seccomp)
    #[arg(long, value_enum, env = "PEAPOD_RUNTIME", default_value_t = RuntimeKind::Vm)]
    pub runtime: RuntimeKind,
}

impl GuestArgs {
    /// The guest kernel and agent initramfs (see [`guest_artifacts`]).
    pub fn artifacts(&self) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
        guest_artifacts(self.kernel.as_deref(), self.initrd.as_deref())
    }

    /// What pods in `runtime` need from the host, checked before anything is made: a pod
    /// VM's kernel and agent initramfs (returned), or what the container runtime needs.
    pub fn prepare_runtime(&self, runtime: RuntimeKind) -> anyhow::Result<Option<VmArtifacts>> {
        match runtime {
            RuntimeKind::Vm => self.artifacts().map(Some),
            RuntimeKind::Container => {
                crate::runtime::container::check_host()?;
                Ok(None)
            }
        }
    }

    pub fn open_store(&self) -> anyhow::Result<crate::image::store::Store> {
        crate::image::store::Store::open(&self.store)
            .with_context(|| format!("cannot open the image store at {}", self.store.display()))
    }
}

/// The guest kernel and agent initramfs a pod VM boots: the flags' paths, else the defaults.
pub fn guest_artifacts(
    kernel: Option<&std::path::Path>,
    initrd: Option<&std::path::Path>,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let kernel = match kernel {
        Some(k) => k.to_path_buf(),
        None => crate::guest_kernel::default_kernel()?,
    };
    let initrd = match initrd {
        Some(i) => i.to_path_buf(),
        None => crate::runtime::default_agent_initramfs()?,
    };
    Ok((kernel, initrd))
}

/// Creates a pod from `spec` and starts its supervisor, which boots the VM and creates the
/// containers (stopped): the record, the host snapshots (`-v`, read-only `hostPath`), then
/// the supervisor. On any error nothing of the pod is left.
/// Creates the pod and starts its supervisor; returns once the pod is created. `opening`:
/// requests to send the supervisor at once, on a connection that is returned with their
/// answers to come once the pod is up ([`ApiClient::pipelined`]); `None` where that
/// connection could not be made (connect as to any pod then).
pub fn launch(
    registry: &Registry,
    spec: crate::pod::PodSpec,
    vm: Option<VmArtifacts>,
    opening: &[ApiRequest],
) -> anyhow::Result<(crate::pod::PodRecord, Option<ApiClient>)> {
    use crate::pod::spec::PodVolumeSource;
    // `create` checks the spec (and names an unnamed pod).
    let (record, lock) = registry.create(spec)?;
    let id = record.id.clone();
    let created = (|| -> anyhow::Result<Option<std::os::unix::net::UnixStream>> {
        let store_dir = registry.dirs().store_dir(&id);
        let container_snapshots = record
            .spec
            .init_containers
            .iter()
            .chain(&record.spec.containers)
            .flat_map(|c| &c.volumes)
            .map(|v| (&v.source, &v.disk));
        let pod_snapshots = record.spec.volumes.iter().filter_map(|v| match &v.source {
            PodVolumeSource::HostSnapshot { source, disk } => Some((source, disk)),
            _ => None,
        });
        // A pod VM gets its host directories as snapshots on block images; a host pod binds
        // them (read-only) as they are.
        let snapshots = container_snapshots.chain(pod_snapshots);
        let snapshots = snapshots.filter(|_| record.spec.runtime == RuntimeKind::Vm);
        for (source, disk) in snapshots {
            let out = store_dir.join(disk);
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            crate::image::disk::snapshot_dir(source, &out)
                .with_context(|| format!("cannot snapshot {}", source.display()))?;
        }
        let (kernel, initrd) = vm.unzip();
        let config = crate::supervisor::SupervisorConfig {
            kernel,
            initrd,
            agent_timeout_ms: crate::runtime::oneshot::agent_timeout_from_env().as_millis() as u64,
        };
        Ok(crate::supervisor::spawn(
            registry.dirs(),
            &record,
            lock,
            &config,
            opening,
        )?)
    })();
    let opened = match created {
        Ok(opened) => opened,
        Err(e) => {
            let _ = registry.remove(&id);
            return Err(e);
        }
    };
    let client = opened
        .map(ApiClient::pipelined)
        .transpose()
        .with_context(|| format!("pod {}", record.name))?;
    Ok((record, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_docker_words_them() {
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(59)), "59 seconds");
        assert_eq!(human_duration(Duration::from_secs(120)), "2 minutes");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2 hours");
        assert_eq!(human_duration(Duration::from_secs(86_400 * 3)), "3 days");
    }
}
