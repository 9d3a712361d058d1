//! `peapod doctor` (also `peapod machine check`): what this host has for running pods, and
//! the fix for each missing part.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::host::{HostVirt, KvmNode};
use crate::machine::assets;
use crate::machine::qemu::{AccelChoice, choose_accel};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

struct Check {
    what: &'static str,
    ok: bool,
    detail: String,
}

pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let host = HostVirt::probe();
    let mut checks = Vec::new();
    let kvm_detail = match &host.kvm {
        KvmNode::Absent => "absent".to_string(),
        KvmNode::NoPermission => {
            "present, no permission (run as root or join the kvm group)".into()
        }
        KvmNode::Broken(reason) => format!("present, cannot open: {reason}"),
        KvmNode::Usable => "present".into(),
    };
    checks.push(Check {
        what: "/dev/kvm",
        ok: host.kvm == KvmNode::Usable,
        detail: kvm_detail,
    });
    checks.push(Check {
        what: "PVM",
        ok: !host.pvm,
        detail: if host.pvm {
            "yes: /dev/kvm is paging-based nested KVM; guests run through `peapod machine run`"
                .into()
        } else {
            "no".into()
        },
    });
    checks.push(Check {
        what: "hardware virtualization",
        ok: host.extension.is_some(),
        detail: match host.extension {
            Some(ext) => format!("{ext:?} ({})", ext.kvm_module()),
            None => "none (no vmx/svm in /proc/cpuinfo)".into(),
        },
    });
    checks.push(Check {
        what: "hardware nesting",
        ok: host.nested == Some(true),
        detail: match host.nested {
            Some(true) => "on".into(),
            Some(false) => "off: modprobe the kvm module with nested=1".into(),
            None => "unknown (no kvm_intel/kvm_amd loaded)".into(),
        },
    });
    let direct = host.hardware_kvm();
    let l1_parts: [(&'static str, Result<PathBuf, String>); 3] = [
        ("qemu", assets::find_qemu().map_err(|e| e.to_string())),
        (
            "L1 kernel",
            assets::find_kernel()
                .map(|(kernel, _)| kernel)
                .map_err(|e| e.to_string()),
        ),
        ("busybox", assets::find_busybox().map_err(|e| e.to_string())),
    ];
    let mut machine_ready = true;
    for (what, found) in l1_parts {
        machine_ready &= found.is_ok();
        checks.push(match found {
            Ok(path) => Check {
                what,
                ok: true,
                detail: path.display().to_string(),
            },
            Err(fix) => Check {
                what,
                ok: false,
                detail: fix,
            },
        });
    }
    let guest_kernel = crate::guest_kernel::default_kernel();
    checks.push(Check {
        what: "guest kernel",
        ok: guest_kernel.is_ok(),
        detail: match guest_kernel {
            Ok(path) => path.display().to_string(),
            Err(why) => why.to_string(),
        },
    });
    checks.extend(network_checks());
    let container = crate::runtime::container::check_host();
    checks.push(Check {
        what: "container runtime",
        ok: container.is_ok(),
        detail: match container {
            Ok(()) => "root and cgroup v2: `--runtime container` pods run on this kernel".into(),
            Err(why) => why.to_string(),
        },
    });

    for check in &checks {
        let mark = if check.ok { "ok " } else { "-- " };
        println!("{mark} {:<24} {}", check.what, check.detail);
    }
    let accel = choose_accel(AccelChoice::Auto, &host).map(|a| a.to_string());
    let verdict = match (&direct, machine_ready) {
        (Ok(_), _) => "pods run directly on hardware KVM".to_string(),
        (Err(_), true) => format!(
            "pods run inside `peapod machine run` (L1 accel: {})",
            accel.unwrap_or_else(|e| e.to_string())
        ),
        (Err(why), false) => format!(
            "pods cannot run here: {why}; and the L1 lacks parts: apt-get install qemu-system-x86 \
             linux-image-cloud-amd64 busybox-static"
        ),
    };
    println!("=> {verdict}");
    Ok(if direct.is_ok() || machine_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Pod networking's parts (informational: a pod without a network still runs): the CNI
/// plugins, iptables for the default network's masquerading, and network namespaces left
/// by pods that are gone (`ip netns delete NAME` removes one; its IPAM lease stays until
/// the pod's `peapod rm -f`).
fn network_checks() -> Vec<Check> {
    use crate::network::{self, cni};
    let dirs = cni::default_plugin_dirs();
    let plugins = ["bridge", "host-local"]
        .iter()
        .map(|p| cni::find_plugin(&dirs, p))
        .collect::<Result<Vec<_>, _>>();
    let mut checks = vec![
        Check {
            what: "CNI plugins",
            ok: plugins.is_ok(),
            detail: match plugins {
                Ok(found) => found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(err) => err.to_string(),
            },
        },
        Check {
            what: "iptables",
            ok: assets::find_in_path("iptables").is_some()
                || std::path::Path::new("/usr/sbin/iptables").exists(),
            detail: "for the default network's ipMasq (apt-get install iptables)".into(),
        },
    ];
    let known: Vec<String> = super::pods::registry()
        .list()
        .map(|pods| pods.iter().map(|p| p.id().to_string()).collect())
        .unwrap_or_default();
    let dir = std::path::Path::new(network::DEFAULT_NETNS_DIR);
    let leftovers: Vec<String> = network::netns::list_leftovers(dir, network::POD_NETNS_PREFIX)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|name| {
            let id = &name[network::POD_NETNS_PREFIX.len()..];
            !known.iter().any(|k| k == id)
        })
        .collect();
    checks.push(Check {
        what: "pod netns leftovers",
        ok: leftovers.is_empty(),
        detail: if leftovers.is_empty() {
            "none".into()
        } else {
            format!(
                "{} in {}: {} (`ip netns delete NAME`)",
                leftovers.len(),
                dir.display(),
                leftovers.join(" ")
            )
        },
    });
    checks
}
