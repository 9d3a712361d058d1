//! `peapod inspect`: a pod's spec and state as JSON.

use std::process::ExitCode;

use super::pods;

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  peapod inspect web | jq '.[0].state.containers'")]
pub struct InspectArgs {
    /// The pods (names, ids or id prefixes)
    #[arg(required = true)]
    pods: Vec<String>,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    let mut out = Vec::new();
    for query in &args.pods {
        let v = pods::resolve(&registry, query)?;
        out.push(serde_json::json!({
            "id": v.record.id.to_string(),
            "name": v.record.name,
            "created_at": humantime::format_rfc3339_seconds(v.record.created_at).to_string(),
            "spec": v.record.spec,
            "state": v.state,
            "vm": {
                "cpus": v.record.spec.vm.cpus,
                "memory_mib": v.record.spec.vm.memory_mib,
                "vmm_pid": v.state.vmm_pid,
                "supervisor_pid": v.state.supervisor_pid,
            },
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
