//! Emulated devices. Each one implements [`crate::vmm::bus::BusDevice`] and is placed on the
//! PIO or MMIO bus by the VM builder.

pub mod serial;
