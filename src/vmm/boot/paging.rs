//! Boot page tables: an identity map of the first [`IDENTITY_MAPPED_SIZE`] bytes with 2 MiB
//! pages (one PML4 entry, one PDPT entry, a full page directory), which is all that a 64-bit
//! entry point (the built-in guest, or Linux's `startup_64`) needs before it builds its own.

use vm_memory::{Bytes, GuestAddress};

use super::BootError;
use crate::vmm::layout::{IDENTITY_MAPPED_SIZE, PDE_START, PDPTE_START, PML4_START};
use crate::vmm::memory::GuestMemory;

/// Entry bits: present, writable.
pub const PAGE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry bit: this entry maps a 2 MiB page.
pub const PAGE_HUGE: u64 = 0x80;
/// Size of a page mapped by one page-directory entry.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Writes the identity-mapping tables into `mem` and returns the value for CR3.
pub fn write_identity_page_tables(mem: &GuestMemory) -> Result<u64, BootError> {
    write_entry(mem, "PML4", PML4_START, PDPTE_START | PAGE_PRESENT_RW)?;
    write_entry(
        mem,
        "page directory pointer table",
        PDPTE_START,
        PDE_START | PAGE_PRESENT_RW,
    )?;
    for i in 0..IDENTITY_MAPPED_SIZE / HUGE_PAGE_SIZE {
        let entry = (i * HUGE_PAGE_SIZE) | PAGE_HUGE | PAGE_PRESENT_RW;
        write_entry(mem, "page directory", PDE_START + i * 8, entry)?;
    }
    Ok(PML4_START)
}

fn write_entry(
    mem: &GuestMemory,
    what: &'static str,
    addr: u64,
    entry: u64,
) -> Result<(), BootError> {
    mem.write_obj(entry, GuestAddress(addr))
        .map_err(|source| BootError::Write { what, addr, source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vmm::memory::create_guest_memory;

    /// Walks 4-level page tables the way the MMU does (stopping at a 2 MiB page), reading
    /// them back from guest memory; `None` where an entry is not present.
    pub(crate) fn translate(mem: &GuestMemory, cr3: u64, vaddr: u64) -> Option<u64> {
        let read = |table: u64, index: u64| -> u64 {
            mem.read_obj::<u64>(GuestAddress((table & !0xfff) + index * 8))
                .unwrap()
        };
        let pml4e = read(cr3, (vaddr >> 39) & 0x1ff);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read(pml4e & 0x000f_ffff_ffff_f000, (vaddr >> 30) & 0x1ff);
        if pdpte & 1 == 0 || pdpte & PAGE_HUGE != 0 {
            return None;
        }
        let pde = read(pdpte & 0x000f_ffff_ffff_f000, (vaddr >> 21) & 0x1ff);
        if pde & 1 == 0 || pde & PAGE_HUGE == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (vaddr & (HUGE_PAGE_SIZE - 1)))
    }

    #[test]
    fn the_first_gigabyte_is_identity_mapped() {
        let mem = create_guest_memory(4 << 20).unwrap();
        let cr3 = write_identity_page_tables(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        for vaddr in [
            0,
            0x500,
            0x10_0000,
            0x10_0017,
            0x3f_ffff,
            0x1234_5678,
            (1 << 30) - 1,
        ] {
            assert_eq!(translate(&mem, cr3, vaddr), Some(vaddr), "{vaddr:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 30), None);
        assert_eq!(translate(&mem, cr3, 1 << 39), None);
    }

    #[test]
    fn entries_are_present_writable_and_huge() {
        let mem = create_guest_memory(4 << 20).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4e, PDPTE_START | 0x3);
        let pde1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde1, 0x20_0083);
    }

    #[test]
    fn memory_without_room_for_the_tables_is_an_error() {
        // A region that ends before the page directory.
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0xa800)]).unwrap();
        let err = write_identity_page_tables(&mem).unwrap_err();
        assert!(err.to_string().contains("page directory"), "{err}");
    }
}
