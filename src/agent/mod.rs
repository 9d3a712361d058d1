//! The guest agent, `peapod-agent`: PID 1 of every pod VM. It sets the guest up
//! ([`init`]), serves the host's [`crate::protocol`] on vsock ([`server`]), sets up the
//! pod's network ([`network`]) and runs the pod's containers ([`container`], [`volume`]),
//! with its OS calls behind [`os::Os`] so that the setup logic is unit-tested without root.
//! Every path and machine-wide step comes from the pod's [`layout::PodLayout`]: the guest's
//! here, a host pod's for the host runtime, which runs the same container code.
//!
//! The same binary is also the two helpers the agent starts for containers
//! (`container-init`, `exec-init`; see [`container`]): a helper is single-threaded, so it
//! can fork and change namespaces, which the multi-threaded agent cannot safely do.

pub mod container;
pub mod hardening;
pub mod init;
pub mod layout;
pub mod network;
pub mod os;
pub mod process;
pub mod server;
pub mod volume;
pub mod zygote;

use std::sync::Arc;

use crate::protocol::{CONTROL_PORT, STDIO_PORT};

/// `peapod-agent [container-init|exec-init]`; returns the exit status (the agent itself
/// never returns: it powers the VM off).
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("container-init") => container::container_init_main(),
        Some("exec-init") => container::exec_init_main(),
        // The kernel passes command-line words it does not know on to init: ignore them.
        _ if std::process::id() == 1 => run_agent(),
        _ => {
            eprintln!(
                "peapod-agent: the guest agent runs as PID 1 of a pod VM (the initramfs's \
                 /init); build one with rootfs/build-agent-initramfs.sh"
            );
            2
        }
    }
}

/// The helpers' entry, for any binary that runs the agent's container code: `Some(status)`
/// when this process was started as `container-init` or `exec-init`, else `None`.
pub fn helper_main() -> Option<i32> {
    match std::env::args().nth(1).as_deref() {
        Some("container-init") => Some(container::container_init_main()),
        Some("exec-init") => Some(container::exec_init_main()),
        _ => None,
    }
}

fn run_agent() -> ! {
    if let Err(e) = init::switch_to_tmpfs_root() {
        fatal(&e.to_string());
    }
    let os: Arc<dyn os::Os> = Arc::new(os::RealOs);
    let layout = layout::PodLayout::guest();
    if let Err(e) = init::mount_system(os.as_ref(), &layout) {
        fatal(&format!("mounting the system filesystems: {e}"));
    }
    if let Err(e) = init::send_boot_signal() {
        eprintln!("peapod-agent: no boot signal (boot timing only): {e}");
    }
    let _ = nix::unistd::sethostname("peapod");
    let reaper = process::Reaper::new();
    reaper.start();
    let agent = server::Agent::new(os, reaper, layout);
    let stdio = match server::VsockListener::bind(STDIO_PORT) {
        Ok(l) => l,
        Err(e) => fatal(&format!("listening on vsock port {STDIO_PORT}: {e}")),
    };
    let control = match server::VsockListener::bind(CONTROL_PORT) {
        Ok(l) => l,
        Err(e) => fatal(&format!("listening on vsock port {CONTROL_PORT}: {e}")),
    };
    let a = Arc::clone(&agent);
    std::thread::spawn(move || server::serve(stdio, move |conn| a.serve_stream(conn)));
    // The ready line: the runtime's console tail shows how far a failed boot got.
    eprintln!(
        "peapod-agent: ready on vsock ports {CONTROL_PORT} and {STDIO_PORT} (guest uptime \
         {:.3} s)",
        init::uptime()
    );
    server::serve(control, move |mut conn| {
        if agent.serve_control(&mut conn, &|| Ok(())) {
            init::power_off();
        }
    });
    init::power_off()
}

/// Reports on the console and ends the VM: an agent that cannot serve is a dead pod.
fn fatal(message: &str) -> ! {
    eprintln!("peapod-agent: fatal: {message}");
    init::power_off()
}
