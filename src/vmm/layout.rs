//! Where things live in an x86_64 guest's physical address space. One table, so that the boot
//! code, the memory map given to the guest and the device placement cannot disagree.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)           0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)               0x0000_a000  PDPT
//! 0x0000_7000  Linux zero page           0x0000_b000  PD (512 x 2 MiB = first 1 GiB)
//! 0x0000_8ff0  boot stack top            0x0002_0000  kernel command line
//! 0x0010_0000  kernel / built-in guest   0xc000_0000  32-bit MMIO gap (1 GiB, no RAM)
//! ```

/// The boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT: one null entry, so that any exception during boot is a triple fault (a
/// [`crate::vmm::vcpu::VcpuStop::Shutdown`]) rather than a jump into garbage.
pub const BOOT_IDT_START: u64 = 0x520;
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
/// The first address past the legacy first megabyte: the kernel (and the built-in guest)
/// is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the hole below 4 GiB kept free of RAM for MMIO devices.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the MMIO hole: 4 GiB.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Three pages KVM needs on Intel for real-mode emulation (`KVM_SET_TSS_ADDR`); in the gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The first serial port (COM1) and its register window.
pub const SERIAL_COM1_PORT: u16 = 0x3f8;
pub const SERIAL_PORT_WINDOW: u64 = 8;

// The TSS pages must lie in the MMIO gap, where no RAM is.
const _: () =
    assert!(MMIO_GAP_START <= KVM_TSS_ADDRESS && KVM_TSS_ADDRESS + 0x3000 <= MMIO_GAP_END);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, end exclusive)
        let mut areas = [
            (BOOT_GDT_START, BOOT_GDT_START + 4 * 8),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (BOOT_STACK_POINTER - 0x100, BOOT_STACK_POINTER + 0x10),
            (PML4_START, PML4_START + 0x1000),
            (PDPTE_START, PDPTE_START + 0x1000),
            (PDE_START, PDE_START + 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
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
