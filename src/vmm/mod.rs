//! The microVM monitor: KVM, guest memory, vCPUs, boot, devices.
//!
//! - [`kvm`]: opening and checking `/dev/kvm` (refuses PVM and hosts without VT-x/AMD-V).
//! - [`memory`], [`layout`]: guest RAM and where things live in the guest's address space.
//! - [`vm`]: a KVM VM with its memory slots.
//! - [`bus`]: address-range buses (PIO and MMIO) that vCPU exits are dispatched through.
//! - [`vcpu`]: vCPU setup (MSRs, LAPIC, registers), the run loop and exit handling.
//! - [`cpuid`]: the CPUID each vCPU sees.
//! - [`boot`]: long-mode and PVH entry, Linux loading (kernel, initrd, command line, memory
//!   map, PVH start info, zero page), the MP table.
//! - [`devices`]: emulated legacy devices (serial port, i8042, boot signal).
//! - [`virtio`]: virtio-mmio devices.
//! - [`stop`]: how a running VM ends and why.
//! - [`vcpu_stats`]: KVM's per-vCPU exit counters (for a triple fault's report).
//! - [`hello`]: the built-in guest program.
//! - [`config`]: one VM's configuration as data ([`config::VmmConfig`], JSON for
//!   `--config FILE`); `peapod vm boot`'s flags build the same struct.
//! - [`builder`]: the one place that assembles and starts VMs.
//! - [`events`]: what a VMM process reports while it runs (started, running, boot signal,
//!   exited, failed) as JSON lines on `--events-fd`, and the reader for the host side.
//! - [`seccomp`]: the syscall allow-list of each VMM thread (vCPU, device, main).
//! - [`jail`]: what the VMM process gives up before the guest runs (namespaces, root, uid).
//! - [`ratelimit`]: rate limits for log lines a guest can cause again and again.
//! - [`program`]: which executable runs a VM as its own process (`peapod-vmm`).

pub mod boot;
pub mod builder;
pub mod bus;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod events;
pub mod hello;
pub mod jail;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod program;
pub mod ratelimit;
pub mod seccomp;
pub mod stop;
pub mod vcpu;
pub mod vcpu_stats;
pub mod virtio;
pub mod vm;
