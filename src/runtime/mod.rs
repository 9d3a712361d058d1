//! Runtimes on the host: how peapod runs pods.
//!
//! - [`vm`]: a pod VM, peapod's VMM in a child process with the agent initramfs, and the
//!   protocol connection to its agent.
//! - [`container`]: one container in its own pod VM from a filesystem image, its stdio
//!   streamed and its exit status returned: what `peapod vm run-container` does, callable
//!   from other code (an image reference resolves to such an image plus its config).

pub mod container;
pub mod vm;

pub use container::{
    RunContainer, RunError, RunIo, RunOutcome, default_agent_initramfs, run_container,
    run_container_io,
};
pub use vm::{
    PodVm, PodVmConfig, PodVmError, PodVmNet, ProcessHandle, VmDown, VmEnd, VmmExit, VmmStatus,
};
