//! Emulated legacy devices (virtio devices are in [`crate::vmm::virtio`]). Each one implements [`crate::vmm::bus::BusDevice`] and is placed on the
//! PIO or MMIO bus by the VM builder.

pub mod boot_signal;
pub mod i8042;
pub mod serial;
