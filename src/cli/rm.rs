//! `peapod rm`: removes pods (their state, logs and snapshots); `-f` stops running ones
//! first.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::pods;
use crate::supervisor::api::ApiRequest;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod rm web
  peapod rm -f $(peapod ps -aq)")]
pub struct RmArgs {
    /// Kill running pods (SIGKILL, VM off) before removing them
    #[arg(short = 'f', long)]
    force: bool,
    /// The pods (names, ids or id prefixes)
    #[arg(required = true)]
    pods: Vec<String>,
}

pub fn run(args: RmArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    Ok(pods::for_each_name(&args.pods, |query| {
        remove(&registry, query, args.force)
    }))
}

fn remove(
    registry: &crate::pod::registry::Registry,
    query: &str,
    force: bool,
) -> anyhow::Result<()> {
    let view = pods::resolve(registry, query)?;
    let id = view.record.id.clone();
    if registry.is_supervised(&id) {
        if !force {
            bail!(
                "pod {} is {}: stop it first (peapod stop {}) or remove it with rm -f",
                view.record.name,
                view.state.status,
                view.record.name
            );
        }
        let stopped = pods::connect(registry, &view)
            .and_then(|mut c| Ok(c.expect_state(&ApiRequest::Stop { timeout_s: 0 })?));
        if let Err(e) = stopped {
            tracing::warn!("the supervisor did not stop the pod ({e}); killing it");
        }
        // The supervisor exits once the pod is down; one that does not is killed (its VMM
        // dies with it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while registry.is_supervised(&id) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if registry.is_supervised(&id) {
            if let Some(pid) = view.state.supervisor_pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while registry.is_supervised(&id) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if registry.is_supervised(&id) {
                bail!(
                    "pod {}'s supervisor does not end; not removed",
                    view.record.name
                );
            }
        }
    }
    registry.remove(&id)?;
    Ok(())
}
