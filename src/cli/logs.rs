//! `peapod logs`: what a pod's container wrote, from its log files in the store.

use std::process::ExitCode;

use anyhow::bail;

use super::pods;
use crate::pod::logs::{LogOptions, follow_logs, read_logs};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod logs web
  peapod logs -f --tail 10 web
  peapod logs --timestamps web -c main")]
pub struct LogsArgs {
    /// Keep printing new lines until the pod ends
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Each line with the time it was written (RFC 3339)
    #[arg(short = 't', long)]
    timestamps: bool,
    /// The pod (name, id or id prefix)
    pod: String,
    /// The container [default: the pod's first]
    #[arg(short = 'c', long)]
    container: Option<String>,
}

pub fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    let view = pods::resolve(&registry, &args.pod)?;
    let container = match &args.container {
        Some(c) => {
            if !view.record.spec.containers.iter().any(|x| &x.name == c) {
                let names: Vec<&str> = view
                    .record
                    .spec
                    .containers
                    .iter()
                    .map(|x| x.name.as_str())
                    .collect();
                bail!(
                    "pod {} has no container {c} (it has: {})",
                    view.record.name,
                    names.join(", ")
                );
            }
            c.clone()
        }
        None => match view.record.spec.containers.first() {
            Some(c) => c.name.clone(),
            None => bail!("pod {} has no containers", view.record.name),
        },
    };
    let path = registry
        .dirs()
        .container_log_path(&view.record.id, &container);
    let opts = LogOptions {
        tail: args.tail,
        timestamps: args.timestamps,
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    if args.follow {
        let id = view.record.id.clone();
        let mut live = move || {
            registry
                .get(&id)
                .map(|v| pods::is_live(&v))
                .unwrap_or(false)
        };
        follow_logs(&path, opts, &mut out, Some(&mut err), &mut live)?;
    } else {
        read_logs(&path, opts, &mut out, Some(&mut err))?;
    }
    Ok(ExitCode::SUCCESS)
}
