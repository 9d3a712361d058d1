//! `peapod kill`: a signal to a pod's containers.

use std::process::ExitCode;

use anyhow::bail;

use super::pods;
use crate::supervisor::api::ApiRequest;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod kill web
  peapod kill -s HUP web")]
pub struct KillArgs {
    /// The signal: a name (KILL, SIGTERM, HUP) or a number
    #[arg(short = 's', long, default_value = "KILL")]
    signal: String,
    /// The pod (name, id or id prefix)
    pod: String,
}

/// A signal's number from `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(text: &str) -> anyhow::Result<i32> {
    if let Ok(n) = text.parse::<i32>() {
        if nix::sys::signal::Signal::try_from(n).is_ok() {
            return Ok(n);
        }
        bail!("signal {n} is not a Linux signal number");
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| {
            anyhow::anyhow!("unknown signal {text}: give a name (TERM, KILL, HUP) or a number")
        })
}

pub fn run(args: KillArgs) -> anyhow::Result<ExitCode> {
    let signal = parse_signal(&args.signal)?;
    let registry = pods::registry();
    let view = pods::resolve(&registry, &args.pod)?;
    if !matches!(view.state.status, crate::pod::state::PodStatus::Running) {
        bail!(
            "pod {} is {}, not Running",
            view.record.name,
            view.state.status
        );
    }
    let mut client = pods::connect(&registry, &view)?;
    client.expect_ok(&ApiRequest::Signal {
        container: None,
        signal,
    })?;
    println!("{}", args.pod);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("HUP").unwrap(), 1);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }
}
