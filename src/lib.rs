//! peapod: each pod in its own KVM microVM, the pod's containers inside it.
//!
//! Layout: `cli` (one file per verb), `host` (what this host offers for VMs), `machine` (the
//! nested host VM used as a test bed where there is no hardware KVM), `vmm` (the microVM
//! monitor), `cpio` (initramfs archives), `pod` (the pod model on disk: specs, state, ids
//! and names, the registry of pods, container logs, Kubernetes Pod and Secret YAML).

pub mod agent;
pub mod bench;
pub mod cli;
pub mod cpio;
pub mod dirs;
pub mod guest_kernel;
pub mod host;
pub mod image;
pub mod machine;
pub mod pod;
pub mod protocol;
pub mod runtime;
pub mod supervisor;
pub mod vmm;
