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
