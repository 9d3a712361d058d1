//! `peapod ps`: the pods, from their state files (no VM is asked).

use std::process::ExitCode;

use super::pods;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod ps
  peapod ps -a --format json
  peapod rm -f $(peapod ps -aq)")]
pub struct PsArgs {
    /// All pods (by default only Created and Running ones)
    #[arg(short = 'a', long)]
    all: bool,
    /// Only the ids
    #[arg(short = 'q', long)]
    quiet: bool,
    /// table, or json (one object per line)
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

pub fn run(args: PsArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    let views: Vec<_> = registry
        .list()?
        .into_iter()
        .filter(|v| args.all || pods::is_live(v))
        .collect();
    if args.quiet {
        for v in &views {
            println!("{}", v.record.id.short());
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        Format::Json => {
            for v in &views {
                let images = images_of(v);
                let line = serde_json::json!({
                    "id": v.record.id.to_string(),
                    "name": v.record.name,
                    "images": images,
                    "status": v.state.status,
                    "status_text": pods::status_column(v),
                    "restarts": v.state.containers.iter().map(|c| c.restarts).sum::<u32>(),
                    "network": v.record.spec.network.name(),
                    "ports": ports_of(v),
                    "created_at": humantime::format_rfc3339_seconds(v.record.created_at).to_string(),
                });
                println!("{line}");
            }
        }
        Format::Table => {
            println!(
                "{:<12}  {:<20}  {:<28}  {:<26}  {:>8}  {:<14}  {:<24}  CREATED",
                "POD ID", "NAME", "IMAGES", "STATUS", "RESTARTS", "NETWORK", "PORTS"
            );
            for v in &views {
                let images = images_of(v);
                println!(
                    "{:<12}  {:<20}  {:<28}  {:<26}  {:>8}  {:<14}  {:<24}  {} ago",
                    v.record.id.short(),
                    v.record.name,
                    images.join(","),
                    pods::status_column(v),
                    v.state.containers.iter().map(|c| c.restarts).sum::<u32>(),
                    v.record.spec.network.name(),
                    ports_of(v).join(","),
                    pods::human_duration(pods::since(v.record.created_at))
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The images of a pod's containers, in order.
fn images_of(v: &crate::pod::registry::PodView) -> Vec<&str> {
    v.record
        .spec
        .containers
        .iter()
        .map(|c| c.image.as_str())
        .collect()
}

/// The pod's published ports in docker's form (`0.0.0.0:8080->80/tcp`).
pub fn ports_of(v: &crate::pod::registry::PodView) -> Vec<String> {
    crate::network::ports::published_ports(&v.record.spec)
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}
