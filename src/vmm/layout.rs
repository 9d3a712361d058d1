//! Where things live in an x86_64 guest's physical address space. One table, so that the boot
//! code, the memory map given to the guest and the device placement cannot disagree.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)           0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)               0x0000_a000  PDPT
//! 0x0000_6000  PVH start info            0x0000_b000  PD (512 x 2 MiB = first 1 GiB)
//! 0x0000_6040  PVH module list           0x0002_0000  kernel command line
//! 0x0000_6080  PVH memory map            0x0009_fc00  MP table (to 640 KiB; not RAM)
//! 0x0000_7000  Linux zero page           0x0010_0000  kernel / built-in guest
//! 0x0000_8ff0  boot stack top            (initrd: at the top of RAM below the gap)
//!
//! 0xc000_0000  32-bit MMIO gap (1 GiB, no RAM): boot-signal page at its start,
//! 0xd000_0000  virtio-mmio windows (4 KiB each, IRQs 5..=23),
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC, 0xfffb_c000 KVM identity map + TSS
//! 0x1_0000_0000  RAM that did not fit below the gap
//! ```
//!
//! Port I/O: 0x60/0x64 i8042 (reset only), 0x3f8 COM1 (IRQ 4).

/// The boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT: one null entry, so that any exception during boot is a triple fault (a
/// [`crate::vmm::vcpu::VcpuStop::Shutdown`]) rather than a jump into garbage.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` (the PVH entry's `ebx`).
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map (`hvm_memmap_table_entry`s), up to the zero page.
pub const PVH_MEMMAP: u64 = 0x6080;
/// How many PVH memory map entries fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP) / 24) as usize;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer; the stack grows down towards the zero page.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table (the value of CR3).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
/// How much of the address space the boot page tables identity-map.
pub const IDENTITY_MAPPED_SIZE: u64 = 1 << 30;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Longest command line, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// The MP table (floating pointer first), in the last KiB below 640 KiB where Linux looks
/// for it. RAM in the memory map ends here.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// End of conventional memory (the legacy video and ROM area follows, not RAM).
pub const EBDA_END: u64 = 0xa_0000;
/// The first address past the legacy first megabyte: the kernel (and the built-in guest)
/// is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the hole below 4 GiB kept free of RAM for MMIO devices.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the MMIO hole: 4 GiB.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Where a guest writes to say it is up (see [`crate::vmm::devices::boot_signal`]).
pub const BOOT_SIGNAL_ADDRESS: u64 = MMIO_GAP_START;
/// The boot-signal device's window.
pub const BOOT_SIGNAL_SIZE: u64 = 0x1000;
/// The first virtio-mmio register window; the next ones follow every 4 KiB.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// The IRQ of the first virtio-mmio device; the next ones count up.
pub const VIRTIO_IRQ_FIRST: u32 = 5;
/// The last IRQ a device can get: the IOAPIC has 24 pins.
pub const IRQ_LAST: u32 = 23;
/// The IOAPIC's registers (KVM's in-kernel IOAPIC answers here).
pub const IOAPIC_ADDRESS: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const LAPIC_ADDRESS: u64 = 0xfee0_0000;
/// One page KVM needs on Intel for real-mode emulation (`KVM_SET_IDENTITY_MAP_ADDR`).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Three pages KVM needs on Intel for real-mode emulation (`KVM_SET_TSS_ADDR`); in the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The first serial port (COM1) and its register window.
pub const SERIAL_COM1_PORT: u16 = 0x3f8;
pub const SERIAL_PORT_WINDOW: u64 = 8;
/// COM1's interrupt line.
pub const SERIAL_COM1_IRQ: u32 = 4;
/// The i8042 keyboard controller's data and command/status ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;

// The TSS and identity-map pages must lie in the MMIO gap, where no RAM is, clear of the
// APICs.
const _: () =
    assert!(MMIO_GAP_START <= KVM_TSS_ADDRESS && KVM_TSS_ADDRESS + 0x3000 <= MMIO_GAP_END);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 == KVM_TSS_ADDRESS);
const _: () = assert!(LAPIC_ADDRESS + 0x1000 <= KVM_IDENTITY_MAP_ADDRESS);
// Virtio windows: (IRQ_LAST - VIRTIO_IRQ_FIRST + 1) of them, below the IOAPIC.
const _: () = assert!(
    VIRTIO_MMIO_START + (IRQ_LAST - VIRTIO_IRQ_FIRST + 1) as u64 * 0x1000 <= IOAPIC_ADDRESS
);
const _: () = assert!(BOOT_SIGNAL_ADDRESS + BOOT_SIGNAL_SIZE <= VIRTIO_MMIO_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, end exclusive)
        let mut areas = [
            (BOOT_GDT_START, BOOT_GDT_START + 4 * 8),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_START_INFO, PVH_MODLIST),
            (PVH_MODLIST, PVH_MEMMAP),
            (PVH_MEMMAP, PVH_MEMMAP + 24 * PVH_MEMMAP_MAX_ENTRIES as u64),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (BOOT_STACK_POINTER - 0x100, BOOT_STACK_POINTER + 0x10),
            (PML4_START, PML4_START + 0x1000),
            (PDPTE_START, PDPTE_START + 0x1000),
            (PDE_START, PDE_START + 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, EBDA_END),
            (HIMEM_START, HIMEM_START + 1),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
    }
}
