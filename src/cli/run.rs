//! `peapod run`: a pod from an image, in its own VM (or, with `--runtime container`, as
//! plain containers on the host), under a supervisor of its own.

use std::io::IsTerminal;
use std::path::{Component, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

use super::pods;
use crate::network::ports::PublishedPort;
use crate::pod::spec::{
    ContainerConfig, NetworkMode, PodSpec, PodVolume, PodVolumeSource, PortSpec, RestartPolicy,
    VmSize, VolumeMount, VolumeSnapshot,
};
use crate::protocol::Resources;
use crate::runtime::RuntimeKind;
use crate::supervisor::api::{ApiError, ApiRequest};

/// The container's name in a pod made by `peapod run`.
pub const MAIN_CONTAINER: &str = "main";
/// Guest RAM of a pod VM unless --memory says otherwise.
const DEFAULT_MEMORY_MIB: u64 = crate::vmm::builder::DEFAULT_MEMORY_MIB;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod run --rm peapod/busybox:latest echo hi
  peapod run -d --name web peapod/busybox:latest sh -c 'echo start; sleep 600'
  peapod run -it --rm peapod/busybox:latest sh
  peapod run --rm -v /srv/site:/site:ro -e MODE=ro --memory 512m peapod/busybox:latest ls /site
  peapod run -d --name web -p 127.0.0.1:8080:80 peapod/busybox:latest httpd -f -p 80
  peapod run --rm --network none peapod/busybox:latest ip addr
  peapod run --rm --runtime container peapod/busybox:latest uname -r")]
pub struct RunArgs {
    /// Run in the background and print the pod's id
    #[arg(short = 'd', long)]
    detach: bool,
    /// Remove the pod when it exits
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and pass it to the container
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a pseudo-terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// The pod's name (letters, digits, `_`, `.`, `-`; default: generated)
    #[arg(long)]
    name: Option<String>,
    /// An environment variable (K=V, or K to take the host's value). Repeatable.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// A file of K=V lines (blank lines and # comments skipped). Repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// The command's working directory in the container
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run as UID[:GID] (numeric)
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    user: Option<String>,
    /// Guest RAM of the pod VM (also the most its containers can use): bytes, or with a
    /// unit k, m, g (`512m`); 64m to 64g
    #[arg(long, value_name = "SIZE")]
    memory: Option<MemorySize>,
    /// vCPUs of the pod VM, 1 to 32
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// A host directory in the container: SRC:DST:ro, read-only (a pod VM gets a snapshot
    /// taken at start; --runtime container binds the directory itself). Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST:ro")]
    volumes: Vec<VolumeArg>,
    /// A stored secret (peapod secret create) as files in /run/secrets/NAME/, read-only.
    /// Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// Restart the container inside the running VM when it exits: no, on-failure[:N] (at
    /// most N times), always; with the kubelet's backoff (10 s doubling to 5 min)
    #[arg(long, value_name = "POLICY", default_value = "no")]
    restart: RestartArg,
    #[command(flatten)]
    guest: pods::GuestArgs,
    /// The image (NAME[:TAG]; pulled first when the store does not have it)
    image: String,
    /// The pod's network: peapod (the default bridge peapod0, 10.88.0.0/16), none (loopback
    /// only) or the name of a CNI network under /etc/peapod/cni/
    #[arg(
        long,
        value_name = "NETWORK",
        env = "PEAPOD_NETWORK",
        default_value = NetworkMode::DEFAULT_NETWORK
    )]
    network: String,
    /// Publish a port of the pod on the host: [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]
    /// (all host addresses unless IP is given)
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    publish: Vec<PublishArg>,
    /// Give the container every capability, no seccomp filter and an unmasked /proc and
    /// writable /sys, as docker run --privileged
    #[arg(long)]
    privileged: bool,
    /// The command and its arguments (replaces the image's Cmd)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `-p [IP:]HOSTPORT:CONTAINERPORT[/PROTO]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishArg(pub PublishedPort);

impl FromStr for PublishArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::network::ports::parse_publish(s)
            .map(PublishArg)
            .map_err(|e| e.to_string())
    }
}

impl PublishArg {
    fn port_spec(&self) -> PortSpec {
        let p = self.0;
        PortSpec {
            container_port: p.container_port,
            host_port: Some(p.host_port),
            host_ip: (!p.host_ip.is_unspecified()).then(|| p.host_ip.to_string()),
            protocol: p.protocol,
        }
    }
}

/// `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartArg(pub RestartPolicy);

impl FromStr for RestartArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let policy = match s {
            "no" | "never" => RestartPolicy::Never,
            "always" => RestartPolicy::Always,
            "on-failure" => RestartPolicy::OnFailure { max_retries: None },
            other => match other.strip_prefix("on-failure:") {
                Some(n) => RestartPolicy::OnFailure {
                    max_retries: Some(n.parse().map_err(|_| {
                        format!("`{s}`: the count after on-failure: must be a number")
                    })?),
                },
                None => {
                    return Err(format!(
                        "`{s}` is not a restart policy: give no, on-failure[:N] or always"
                    ));
                }
            },
        };
        Ok(RestartArg(policy))
    }
}

/// `--memory`: a size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize(pub u64);

impl FromStr for MemorySize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let t = t
            .strip_suffix("ib")
            .or_else(|| t.strip_suffix('b'))
            .unwrap_or(&t);
        let (digits, shift) = match t.chars().last() {
            Some('k') => (&t[..t.len() - 1], 10),
            Some('m') => (&t[..t.len() - 1], 20),
            Some('g') => (&t[..t.len() - 1], 30),
            _ => (t, 0),
        };
        let n: u64 = digits.parse().map_err(|_| {
            format!("`{s}` is not a size: give bytes or a number with k, m or g (`512m`)")
        })?;
        n.checked_mul(1 << shift)
            .map(MemorySize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

/// `-v SRC:DST:ro`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    source: PathBuf,
    destination: PathBuf,
}

impl FromStr for VolumeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst) = match parts.as_slice() {
            [src, dst, "ro"] => (*src, *dst),
            [_, _] | [_, _, "rw"] => {
                return Err(format!(
                    "`{s}`: read-write volumes are not supported yet (peapod has no shared \
                     filesystem with the VM); add `:ro` for a read-only snapshot taken at start"
                ));
            }
            _ => return Err(format!("`{s}`: give SRC:DST:ro")),
        };
        let destination = PathBuf::from(dst);
        if !destination.is_absolute()
            || destination
                .components()
                .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(format!(
                "`{s}`: the container path {dst} must be absolute and free of `..`"
            ));
        }
        if src.is_empty() {
            return Err(format!("`{s}`: the host directory is empty"));
        }
        Ok(VolumeArg {
            source: PathBuf::from(src),
            destination,
        })
    }
}

/// K=V entries from `--env-file` files and `-e`, in that order (as docker applies them).
fn environment(files: &[PathBuf], env: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --env-file {}", file.display()))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(env_entry(line)?);
        }
    }
    for e in env {
        out.push(env_entry(e)?);
    }
    Ok(out)
}

fn env_entry(entry: &str) -> anyhow::Result<String> {
    match entry.split_once('=') {
        Some(("", _)) => bail!("`{entry}`: an environment variable needs a name (K=V)"),
        Some(_) => Ok(entry.to_string()),
        None => Ok(format!(
            "{entry}={}",
            std::env::var(entry).unwrap_or_default()
        )),
    }
}

/// Checks everything that can be checked before anything is created.
fn vm_size(args: &RunArgs) -> anyhow::Result<VmSize> {
    let memory_mib = match args.memory {
        None => DEFAULT_MEMORY_MIB,
        Some(MemorySize(bytes)) => bytes.div_ceil(1 << 20),
    };
    if !(64..=65_536).contains(&memory_mib) {
        bail!("--memory {memory_mib} MiB is out of range: give 64m to 64g");
    }
    let cpus = u8::try_from(args.cpus)
        .ok()
        .filter(|c| (1..=32).contains(c))
        .ok_or_else(|| anyhow::anyhow!("--cpus {} is out of range: give 1 to 32", args.cpus))?;
    Ok(VmSize { cpus, memory_mib })
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.detach && args.tty && args.interactive {
        bail!("-d with -it: there is no terminal to attach in the background; drop -d or -it");
    }
    if let Some(name) = &args.name {
        crate::pod::id::validate_name(name)?;
    }
    let vm = vm_size(&args)?;
    let network = NetworkMode::parse(&args.network)?;
    let published: Vec<PublishedPort> = args.publish.iter().map(|p| p.0).collect();
    crate::pod::spec::check_ports(&network, &published)?;
    for v in &args.volumes {
        if !v.source.is_dir() {
            bail!(
                "-v {}: the host directory {} does not exist",
                v.destination.display(),
                v.source.display()
            );
        }
    }
    let env = environment(&args.env_files, &args.env)?;
    let store_of_secrets = crate::secret::SecretStore::from_env();
    let mut pod_volumes = Vec::new();
    let mut secret_mounts = Vec::new();
    for (i, name) in args.secrets.iter().enumerate() {
        store_of_secrets
            .get(name)
            .with_context(|| format!("--secret {name}"))?;
        let volume = format!("secret-{i}");
        pod_volumes.push(PodVolume {
            name: volume.clone(),
            source: PodVolumeSource::Secret {
                secret_name: name.clone(),
                optional: false,
            },
        });
        secret_mounts.push(VolumeMount {
            name: volume,
            mount_path: PathBuf::from("/run/secrets").join(name),
            read_only: true,
            sub_path: None,
        });
    }
    let runtime = args.guest.runtime;
    let artifacts = args.guest.prepare_runtime(runtime)?;

    // The image: pulled first when the store lacks it, then its block image.
    let store = args.guest.open_store()?;
    let overrides = crate::image::process::Overrides {
        entrypoint: None,
        command: args.command.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
    };
    let prepare = || crate::image::prepare_pod_image(&store, &args.image, &overrides, runtime);
    let prepared = match prepare() {
        Err(crate::image::ImageError::Store(crate::image::store::StoreError::NotFound {
            ..
        })) => {
            pull(&store, &args.image)?;
            prepare()
        }
        other => other,
    };
    let (resolved, process) =
        prepared.with_context(|| format!("cannot prepare image {}", args.image))?;
    let process = process.into_spec(args.tty, args.interactive);
    let registry = pods::registry();
    let volumes: Vec<VolumeSnapshot> = args
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| VolumeSnapshot {
            source: v.source.clone(),
            destination: v.destination.clone(),
            disk: PathBuf::from(format!("volumes/{i}.erofs")),
        })
        .collect();
    let name = args.name.clone().unwrap_or_default();
    let spec = PodSpec {
        hostname: if name.is_empty() {
            "peapod".into()
        } else {
            name.replace('_', "-")
        },
        name,
        vm,
        containers: vec![ContainerConfig {
            name: MAIN_CONTAINER.into(),
            image: args.image.clone(),
            image_digest: resolved.manifest_digest.to_string(),
            disk: resolved.root.clone(),
            process,
            resources: Resources::default(),
            volumes,
            volume_mounts: secret_mounts,
            secret_env: Vec::new(),
            ports: args.publish.iter().map(PublishArg::port_spec).collect(),
            read_only_root: false,
            privileged: args.privileged,
        }],
        auto_remove: args.rm,
        init_containers: Vec::new(),
        restart_policy: args.restart.0,
        termination_grace_period_s: None,
        volumes: pod_volumes,
        labels: Default::default(),
        annotations: Default::default(),
        network,
        runtime,
    };
    // A host pod's supervisor serves its API once the pod is up: attaching (or, detached,
    // starting) is asked for as it starts, and answered with no connection to make and no
    // round trip then. A pod VM's serves it while the VM boots: asked after.
    let opening = if args.detach {
        ApiRequest::Start
    } else {
        ApiRequest::Attach {
            container: MAIN_CONTAINER.into(),
            stdin: args.interactive,
            start: true,
        }
    };
    let early = match runtime {
        RuntimeKind::Container => std::slice::from_ref(&opening),
        RuntimeKind::Vm => &[],
    };
    let (record, opened) = pods::launch(&registry, spec, artifacts, early)?;
    let id = record.id.clone();
    let mut client = match opened {
        Some(client) => client,
        None => {
            let view = registry.resolve(id.as_str())?;
            let mut client = pods::connect(&registry, &view)?;
            client.send(&opening)?;
            client
        }
    };

    if args.detach {
        match client.answer_ok() {
            Ok(()) => {
                println!("{id}");
                Ok(ExitCode::SUCCESS)
            }
            Err(ApiError::Refused {
                message,
                exit_code: Some(code),
            }) => {
                eprintln!("peapod: {message}");
                Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
            }
            Err(e) => Err(e.into()),
        }
    } else {
        let conn = client.attached()?;
        // The supervisor of an auto-remove pod ends this connection once the pod is removed.
        let removal = match args.rm {
            true => Some(conn.try_clone()?),
            false => None,
        };
        let end = super::tty::attach_session(conn, args.interactive, args.tty)?;
        if let Some(why) = &end.start_error {
            eprintln!("peapod: {why}");
        }
        report_signal(&end.status);
        if let Some(conn) = removal {
            crate::runtime::closes_within(&conn, REMOVAL_TIMEOUT);
        }
        Ok(ExitCode::from(u8::try_from(end.status.code).unwrap_or(255)))
    }
}

/// How long `run --rm` waits for its pod's removal after the process ended.
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(20);

/// Says on stderr why a process died, when a signal or the OOM killer ended it.
pub fn report_signal(status: &crate::protocol::ExitStatus) {
    if status.oom_killed {
        eprintln!(
            "peapod: the container was killed by the kernel's OOM killer (give the pod more \
             --memory)"
        );
    } else if let Some(sig) = status.signal {
        let name = nix::sys::signal::Signal::try_from(sig).map_or("?", |s| s.as_str());
        if sig != libc::SIGTERM && sig != libc::SIGKILL && sig != libc::SIGINT {
            eprintln!("peapod: the container was killed by signal {sig} ({name})");
        }
    }
}

/// Pulls `reference`, with progress on a terminal.
pub(super) fn pull(store: &crate::image::store::Store, reference: &str) -> anyhow::Result<()> {
    use crate::image::pull::{self, PullOptions};
    use crate::image::registry::ClientOptions;
    use crate::image::registry::auth::Credentials;
    let credentials = match std::env::var("PEAPOD_REGISTRY_CREDS") {
        Ok(text) => Some(
            Credentials::parse(&text)
                .context("PEAPOD_REGISTRY_CREDS must be USER:PASSWORD with a non-empty USER")?,
        ),
        Err(_) => None,
    };
    let opts = PullOptions {
        client: ClientOptions {
            insecure: false,
            credentials,
        },
        name: None,
    };
    let quiet = !std::io::stderr().is_terminal();
    if !quiet {
        eprintln!("Unable to find image '{reference}' locally; pulling it");
    }
    let mut display = super::image::PullProgress::new(quiet);
    let report = pull::pull(store, reference, &opts, &mut |e| display.show(&e));
    display.end();
    report
        .with_context(|| format!("image {reference} is not in the store and cannot be pulled"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_parse_as_docker_writes_them() {
        let r = |s: &str| s.parse::<RestartArg>().map(|r| r.0);
        assert_eq!(r("no").unwrap(), RestartPolicy::Never);
        assert_eq!(r("always").unwrap(), RestartPolicy::Always);
        assert_eq!(
            r("on-failure").unwrap(),
            RestartPolicy::OnFailure { max_retries: None }
        );
        assert_eq!(
            r("on-failure:3").unwrap(),
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert!(r("on-failure:x").unwrap_err().contains("number"));
        assert!(r("unless-stopped").unwrap_err().contains("no, on-failure"));
    }

    #[test]
    fn memory_sizes_parse_as_docker_writes_them() {
        let m = |s: &str| s.parse::<MemorySize>().map(|m| m.0);
        assert_eq!(m("512m").unwrap(), 512 << 20);
        assert_eq!(m("1g").unwrap(), 1 << 30);
        assert_eq!(m("1GiB").unwrap(), 1 << 30);
        assert_eq!(m("2048k").unwrap(), 2 << 20);
        assert_eq!(m("1048576").unwrap(), 1 << 20);
        assert!(m("lots").unwrap_err().contains("not a size"));
        assert!(m("99999999999g").unwrap_err().contains("too large"));
    }

    #[test]
    fn volumes_are_read_only_snapshots() {
        let v = "/srv:/data:ro".parse::<VolumeArg>().unwrap();
        assert_eq!(v.source, PathBuf::from("/srv"));
        assert_eq!(v.destination, PathBuf::from("/data"));
        for rw in ["/srv:/data", "/srv:/data:rw"] {
            let e = rw.parse::<VolumeArg>().unwrap_err();
            assert!(e.contains("not supported yet") && e.contains(":ro"), "{e}");
        }
        assert!("/srv:data:ro".parse::<VolumeArg>().is_err());
        assert!("/srv:/a/../b:ro".parse::<VolumeArg>().is_err());
        assert!("/srv".parse::<VolumeArg>().is_err());
    }

    #[test]
    fn env_entries_take_host_values_and_refuse_empty_names() {
        assert_eq!(env_entry("A=1").unwrap(), "A=1");
        assert!(env_entry("=1").is_err());
        // SAFETY: a variable only this test uses.
        unsafe { std::env::set_var("PEAPOD_TEST_ENV_ENTRY", "x") };
        assert_eq!(
            env_entry("PEAPOD_TEST_ENV_ENTRY").unwrap(),
            "PEAPOD_TEST_ENV_ENTRY=x"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# a comment\n\nB=2\n").unwrap();
        assert_eq!(
            environment(&[file], &["C=3".into()]).unwrap(),
            ["B=2", "C=3"]
        );
    }
}
