//! The microVM monitor: KVM, guest memory, vCPUs, boot, devices.
//!
//! - [`kvm`]: opening and checking `/dev/kvm` (refuses PVM and hosts without VT-x/AMD-V).
//! - [`memory`], [`layout`]: guest RAM and where things live in the guest's address space.
//! - [`vm`]: a KVM VM with its memory slots.
//! - [`bus`]: address-range buses (PIO and MMIO) that vCPU exits are dispatched through.
//! - [`vcpu`]: vCPU setup, the run loop and exit handling.
//! - [`boot`]: long-mode entry (GDT, page tables, registers).
//! - [`devices`]: emulated devices (serial port).
//! - [`hello`]: the built-in guest program.
//! - [`builder`]: the one place that assembles and starts VMs.

pub mod boot;
pub mod builder;
pub mod bus;
pub mod devices;
pub mod hello;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod vcpu;
pub mod virtio;
pub mod vm;
