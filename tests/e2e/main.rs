//! peapod's end-to-end tests: the single entry point of the test bed.
//!
//! Two kinds of test:
//! - `host::*` drive `peapod machine run` itself; they run on the host (they need QEMU and the
//!   L1 parts, not KVM).
//! - `kvm::*` need a real, hardware-assisted `/dev/kvm`. Where the host has one they run right
//!   here; otherwise this binary copies itself into an L1 (`peapod machine run`) and runs them
//!   there, all in one L1 boot.
//!
//! They boot VMs, so plain `cargo test` lists them as ignored; `PEAPOD_E2E=1` (what
//! `scripts/test` sets) runs them. A test that cannot run anywhere is reported as ignored, with
//! the reason printed, never as passed.

mod support;

use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};
use peapod::host::HostVirt;

use support::Place;

mod agent_tests;
mod container_tests;
mod host_tests;
mod image_tests;
mod kube_tests;
mod kvm_tests;
mod net_tests;
mod pod_tests;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let mut cases = host_tests::cases();
    cases.extend(kvm_tests::cases());
    cases.extend(image_tests::cases());
    cases.extend(agent_tests::cases());
    cases.extend(pod_tests::cases());
    cases.extend(kube_tests::cases());
    cases.extend(net_tests::cases());
    cases.extend(container_tests::cases());
    let in_machine = std::env::var_os("PEAPOD_IN_MACHINE").is_some();

    if std::env::var("PEAPOD_E2E").map_or(true, |v| v.is_empty() || v == "0") {
        println!(
            "e2e: skipped: these tests boot VMs; run them with `scripts/test` \
             (or PEAPOD_E2E=1 cargo test --test e2e)"
        );
        let trials = cases
            .iter()
            .map(|c| c.trial(Some("PEAPOD_E2E unset")))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }

    let hardware = HostVirt::probe().hardware_kvm();
    if in_machine {
        // Inside the L1 only the KVM tests run; a missing /dev/kvm there is a failure, not a skip.
        let trials = cases
            .iter()
            .filter(|c| c.place == Place::Kvm)
            .map(|c| c.trial(None))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }

    let testbed = peapod::machine::assets::L1Assets::find();
    let host_skip = testbed.as_ref().err().map(|e| format!("no test bed: {e}"));
    if let Some(reason) = &host_skip {
        println!("e2e: host tests skipped: {reason}");
    }
    let mut trials: Vec<Trial> = cases
        .iter()
        .filter(|c| c.place == Place::Host)
        .map(|c| c.trial(host_skip.as_deref()))
        .collect();
    let kvm_cases = cases.iter().filter(|c| c.place == Place::Kvm);
    let kvm_names: Vec<String> = kvm_cases.clone().map(|c| c.trial_name()).collect();
    match (&hardware, &testbed) {
        (Ok(_), _) => {
            println!("e2e: hardware KVM here: KVM tests run directly");
            for (env, found) in support::guest_artifacts() {
                match found {
                    // SAFETY: single-threaded here, before any test thread starts.
                    Ok(path) => unsafe { std::env::set_var(env, path) },
                    Err(why) => println!("e2e: {env} not available: {why}"),
                }
            }
            trials.extend(kvm_cases.map(|c| c.trial(None)));
            libtest_mimic::run(&args, trials).exit_code()
        }
        (Err(why), Ok(_)) => {
            println!("e2e: no hardware KVM here ({why})");
            println!("e2e: KVM tests run inside the test bed (`peapod machine run`)");
            let host_result = libtest_mimic::run(&args, trials);
            let nested = support::run_self_in_machine(&kvm_names);
            if host_result.has_failed() || nested != 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        (Err(why), Err(no_testbed)) => {
            let reason = format!("no hardware KVM ({why}) and no test bed ({no_testbed})");
            println!("e2e: KVM tests skipped: {reason}");
            trials.extend(kvm_cases.map(|c| c.trial(Some(&reason))));
            libtest_mimic::run(&args, trials).exit_code()
        }
    }
}
