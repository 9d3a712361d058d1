//! KVM tests: real guests on a hardware-assisted `/dev/kvm` (the host's, or the L1's).

use libtest_mimic::Failed;
use peapod::host::HostVirt;

use crate::support::{Case, Place, check, run_peapod};

pub fn cases() -> Vec<Case> {
    let case = |name, run| Case {
        name,
        place: Place::Kvm,
        run,
        skip_if: None,
    };
    vec![
        case("kvm_is_hardware_assisted", kvm_is_hardware_assisted),
        case(
            "tiny_guest_writes_to_a_port_and_halts",
            tiny_guest_writes_to_a_port_and_halts,
        ),
    ]
}

fn kvm_is_hardware_assisted() -> Result<(), Failed> {
    HostVirt::probe()
        .hardware_kvm()
        .map(|_| ())
        .map_err(|e| format!("no usable KVM where KVM tests run: {e}").into())
}

fn tiny_guest_writes_to_a_port_and_halts() -> Result<(), Failed> {
    let out = run_peapod(&["vm", "hello"])?;
    check(out.status.code() == Some(0), "exit status 0", &out)?;
    check(
        String::from_utf8_lossy(&out.stdout).contains("hello from a peapod guest"),
        "the guest's port writes reach stdout",
        &out,
    )
}
