//! peapod: each pod in its own KVM microVM, the pod's containers inside it.
//!
//! Layout:
//! - `cli`: the command line, one file per verb; `bench`: benchmarks against peers.
//! - `pod`: the pod model on disk (specs, state, ids and names, the registry of pods,
//!   container logs, Kubernetes Pod and Secret YAML); `secret`: the store of secrets pods get
//!   at start (0600 files, values never printed).
//! - `supervisor`: the per-pod process that owns a pod's VM, logs and state, and its API;
//!   `runtime`: how the host starts a pod VM and drives its agent.
//! - `vmm`: the microVM monitor; `protocol`: the versioned host-agent protocol; `agent`: the
//!   guest agent, PID 1 of a pod VM (its container code takes its paths and machine-wide
//!   steps from a pod layout, so that a host pod can run it too).
//! - `netlink`: a small synchronous rtnetlink client (links, addresses, routes, tc), tap
//!   devices and the tap↔veth redirect of a pod's network namespace; used by the host and
//!   the agent.
//! - `network`: a pod's host network namespace and its CNI network (attach/detach).
//! - `image`: OCI images, the store, block images; `guest_kernel`: the guest kernel's path.
//! - `logfile`: host log files a guest can fill (the console, the VMM's log): byte-capped
//!   writers and bounded tail reads.
//! - `machine`: the nested host VM used as a test bed where there is no hardware KVM;
//!   `host`: what this host offers for VMs; `cpio`: initramfs archives; `dirs`: where
//!   peapod keeps things.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod cpio;
pub mod dirs;
pub mod guest_kernel;
pub mod host;
pub mod image;
pub mod logfile;
pub mod machine;
pub mod netlink;
pub mod network;
pub mod pod;
pub mod protocol;
pub mod runtime;
pub mod secret;
pub mod supervisor;
pub mod vmm;
