//! `peapod port`: a pod's published ports, as `docker port` prints them.

use std::process::ExitCode;

use super::pods;
use crate::network::ports::{protocol_name, published_ports};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  peapod run -d --name web -p 127.0.0.1:8080:80 peapod/busybox:latest httpd -f -p 80
  peapod port web          # 80/tcp -> 127.0.0.1:8080
  peapod port web 80/tcp   # 127.0.0.1:8080")]
pub struct PortArgs {
    /// The pod (name, id or id prefix)
    pod: String,
    /// Only this container port: PORT or PORT/PROTO
    port: Option<String>,
}

pub fn run(args: PortArgs) -> anyhow::Result<ExitCode> {
    let registry = pods::registry();
    let view = pods::resolve(&registry, &args.pod)?;
    let ports = published_ports(&view.record.spec)?;
    let filter = args
        .port
        .as_deref()
        .map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            match (port.parse::<u16>(), proto) {
                (Ok(port), "tcp" | "udp") => Ok((port, proto)),
                _ => Err(anyhow::anyhow!(
                    "{p:?} is not a container port: give PORT or PORT/tcp or PORT/udp"
                )),
            }
        })
        .transpose()?;
    let mut found = false;
    for p in &ports {
        let proto = protocol_name(p.protocol);
        let host = std::net::SocketAddr::new(p.host_ip, p.host_port);
        match &filter {
            None => println!("{}/{proto} -> {host}", p.container_port),
            Some((port, want)) if *port == p.container_port && *want == proto => {
                println!("{host}")
            }
            Some(_) => continue,
        }
        found = true;
    }
    if !found && let Some(p) = &args.port {
        anyhow::bail!("pod {} does not publish {p}", view.record.name);
    }
    Ok(ExitCode::SUCCESS)
}
