//! `peapod exec`: one more process in a running pod's container.

use std::process::ExitCode;

use anyhow::bail;

use super::pods;
use crate::protocol::ProcessSpec;
use crate::supervisor::api::ApiRequest;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod exec web -- cat /etc/hostname
  peapod exec -it web -- sh
  peapod exec -e DEBUG=1 -w /tmp -u 1000 web -c main -- id")]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the process a pseudo-terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// An environment variable (K=V). Repeatable.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// The working directory [default: the container's]
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run as UID[:GID] (numeric) [default: the container's user]
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    user: Option<String>,
    /// The pod (name, id or id prefix)
    pod: String,
    /// The container [default: the pod's first]
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn ids(text: &str) -> anyhow::Result<(u32, u32)> {
    let num = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| anyhow::anyhow!("-u {text}: give UID or UID:GID (numbers)"))
    };
    Ok(match text.split_once(':') {
        Some((u, g)) => (num(u)?, num(g)?),
        None => {
            let u = num(text)?;
            (u, u)
        }
    })
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    let view = pods::resolve(&registry, &args.pod)?;
    let spec = match &args.container {
        Some(c) => view.record.spec.containers.iter().find(|x| &x.name == c),
        None => view.record.spec.containers.first(),
    };
    let Some(spec) = spec else {
        bail!(
            "pod {} has no container {}",
            view.record.name,
            args.container.as_deref().unwrap_or("")
        );
    };
    if !matches!(view.state.status, crate::pod::state::PodStatus::Running) {
        bail!(
            "pod {} is {}, not Running: exec needs a running pod",
            view.record.name,
            view.state.status
        );
    }
    let base = &spec.process;
    let (uid, gid) = match &args.user {
        Some(u) => ids(u)?,
        None => (base.uid, base.gid),
    };
    let mut env = base.env.clone();
    env.extend(args.env.iter().cloned());
    let process = ProcessSpec {
        args: args.command.clone(),
        env,
        cwd: args
            .workdir
            .as_deref()
            .map_or_else(|| base.cwd.clone(), Into::into),
        uid,
        gid,
        additional_gids: if args.user.is_some() {
            Vec::new()
        } else {
            base.additional_gids.clone()
        },
        tty: args.tty,
        stdin: args.interactive,
    };
    process
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid command: {e}"))?;
    let client = pods::connect(&registry, &view)?;
    let conn = client.attach(&ApiRequest::Exec {
        container: spec.name.clone(),
        process,
    })?;
    let end = super::tty::attach_session(conn, args.interactive, args.tty)?;
    if let Some(why) = &end.start_error {
        eprintln!("peapod: {why}");
    }
    Ok(ExitCode::from(u8::try_from(end.status.code).unwrap_or(255)))
}
