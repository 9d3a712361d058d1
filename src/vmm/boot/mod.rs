//! Booting an x86_64 vCPU without firmware, in one of two ways:
//!
//! - straight into 64-bit long mode, as Linux's 64-bit boot protocol (and the built-in guest)
//!   expect: a flat GDT, an empty IDT and identity-mapped page tables written into guest
//!   memory, then segment, control and general registers set to match ([`LongModeEntry`]);
//! - into 32-bit protected mode with paging off, as the PVH entry point expects ([`PvhEntry`]).
//!
//! `write` does the memory half (no KVM needed, so it is unit-tested);
//! [`crate::vmm::vcpu::Vcpu::enter_long_mode`] and [`crate::vmm::vcpu::Vcpu::enter_pvh`]
//! apply the register half to a vCPU. [`linux`] loads a kernel and writes what it reads at
//! boot; [`mptable`] describes the CPUs and interrupt routing.

pub mod gdt;
pub mod linux;
pub mod mptable;
pub mod paging;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::vmm::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};
use crate::vmm::memory::GuestMemory;
use gdt::{BOOT_GDT, CODE_INDEX, DATA_INDEX, GdtEntry, PVH_GDT, TSS_INDEX};

/// CR0: protection enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR4: physical address extension (required for long mode).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(
        "cannot write the {what} at guest address {addr:#x}: {source}; guest memory must cover \
         the boot area (see vmm::layout)"
    )]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// The CPU state for starting at a 64-bit entry point, once the boot GDT, IDT and page tables
/// are in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongModeEntry {
    /// Where the vCPU starts.
    pub rip: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// Initial RSI (Linux: the address of `boot_params`).
    pub rsi: u64,
    /// Page-table root.
    pub cr3: u64,
}

impl LongModeEntry {
    /// Writes the boot GDT, IDT and identity page tables into `mem` and returns the entry
    /// state for `rip`, with the boot stack and RSI zero.
    pub fn write(mem: &GuestMemory, rip: u64) -> Result<Self, BootError> {
        write_gdt(mem, &BOOT_GDT)?;
        write_idt(mem)?;
        let cr3 = paging::write_identity_page_tables(mem)?;
        Ok(LongModeEntry {
            rip,
            rsp: BOOT_STACK_POINTER,
            rsi: 0,
            cr3,
        })
    }

    /// Sets segments, descriptor tables, control registers and EFER for long mode, keeping
    /// whatever else KVM put in `sregs` (APIC base, reserved bits).
    pub fn apply_to_sregs(&self, sregs: &mut kvm_sregs) {
        load_segments(sregs, &BOOT_GDT);
        sregs.cr3 = self.cr3;
        sregs.cr4 |= X86_CR4_PAE;
        sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
    }

    /// The general registers: instruction and stack pointers, RSI, and RFLAGS with only the
    /// reserved bit set (interrupts off).
    pub fn regs(&self) -> kvm_regs {
        kvm_regs {
            rip: self.rip,
            rsp: self.rsp,
            rbp: self.rsp,
            rsi: self.rsi,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        }
    }
}

/// The FPU as after `FNINIT`, with SSE exceptions masked (the x86 reset values).
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The CPU state for the PVH entry point: 32-bit protected mode, paging off, flat segments,
/// `ebx` pointing at the `hvm_start_info` (see [`linux::write_pvh_boot_info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PvhEntry {
    /// The kernel's PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
    pub rip: u64,
    /// The guest-physical address of the start info.
    pub rbx: u64,
}

impl PvhEntry {
    /// Writes the PVH GDT and an empty IDT into `mem` and returns the entry state.
    pub fn write(mem: &GuestMemory, rip: u64, start_info: u64) -> Result<Self, BootError> {
        write_gdt(mem, &PVH_GDT)?;
        write_idt(mem)?;
        Ok(PvhEntry {
            rip,
            rbx: start_info,
        })
    }

    /// Flat 32-bit segments, protection on, paging and long mode off (PVH, §"x86/HVM direct
    /// boot ABI" of Xen's pvh.pandoc); KVM's other state (APIC base) is kept.
    pub fn apply_to_sregs(&self, sregs: &mut kvm_sregs) {
        load_segments(sregs, &PVH_GDT);
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }

    /// `eip` at the entry, `ebx` at the start info, interrupts off.
    pub fn regs(&self) -> kvm_regs {
        kvm_regs {
            rip: self.rip,
            rbx: self.rbx,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        }
    }
}

/// Points GDTR and IDTR at the boot tables and loads every segment register from `gdt`.
fn load_segments(sregs: &mut kvm_sregs, gdt: &[GdtEntry; 4]) {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let data: kvm_segment = gdt[usize::from(DATA_INDEX)].segment(DATA_INDEX);
    sregs.cs = gdt[usize::from(CODE_INDEX)].segment(CODE_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt[usize::from(TSS_INDEX)].segment(TSS_INDEX);
}

fn write_idt(mem: &GuestMemory) -> Result<(), BootError> {
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| BootError::Write {
            what: "IDT",
            addr: BOOT_IDT_START,
            source,
        })
}

fn write_gdt(mem: &GuestMemory, gdt: &[GdtEntry; 4]) -> Result<(), BootError> {
    for (i, entry) in gdt.iter().enumerate() {
        let addr = BOOT_GDT_START + (i as u64) * 8;
        mem.write_obj(entry.0, GuestAddress(addr))
            .map_err(|source| BootError::Write {
                what: "GDT",
                addr,
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::layout::{HIMEM_START, PML4_START};
    use crate::vmm::memory::create_guest_memory;

    fn written() -> (GuestMemory, LongModeEntry) {
        let mem = create_guest_memory(4 << 20).unwrap();
        let entry = LongModeEntry::write(&mem, HIMEM_START).unwrap();
        (mem, entry)
    }

    #[test]
    fn the_gdt_in_memory_is_what_the_sregs_describe() {
        let (mem, entry) = written();
        let mut sregs = kvm_sregs::default();
        entry.apply_to_sregs(&mut sregs);
        assert_eq!(sregs.gdt.base, BOOT_GDT_START);
        assert_eq!(sregs.gdt.limit, 31);
        for (reg, index) in [
            (sregs.cs, CODE_INDEX),
            (sregs.ds, DATA_INDEX),
            (sregs.ss, DATA_INDEX),
            (sregs.tr, TSS_INDEX),
        ] {
            let raw: u64 = mem
                .read_obj(GuestAddress(sregs.gdt.base + u64::from(reg.selector)))
                .unwrap();
            assert_eq!(gdt::GdtEntry(raw).segment(index), reg);
            assert_eq!(u64::from(reg.selector), u64::from(index) * 8);
        }
        let idt: u64 = mem.read_obj(GuestAddress(sregs.idt.base)).unwrap();
        assert_eq!((idt, sregs.idt.limit), (0, 7));
    }

    #[test]
    fn sregs_enable_long_mode_with_paging() {
        let (_, entry) = written();
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010, // KVM's reset CR0 (CD, NW, ET): kept bits stay
            ..Default::default()
        };
        entry.apply_to_sregs(&mut sregs);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr0, 0x6000_0010 | X86_CR0_PE | X86_CR0_PG);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (sregs.cs.l, sregs.cs.db),
            (1, 0),
            "CS must be a 64-bit code segment"
        );
    }

    #[test]
    fn the_entry_point_and_stack_are_identity_mapped() {
        let (mem, entry) = written();
        for addr in [entry.rip, entry.rsp, BOOT_GDT_START, BOOT_IDT_START] {
            assert_eq!(paging::tests::translate(&mem, entry.cr3, addr), Some(addr));
        }
        let regs = entry.regs();
        assert_eq!(
            (regs.rip, regs.rsp, regs.rflags),
            (HIMEM_START, BOOT_STACK_POINTER, 2)
        );
    }

    #[test]
    fn the_pvh_entry_is_32_bit_protected_mode_with_ebx_at_the_start_info() {
        let mem = create_guest_memory(4 << 20).unwrap();
        let entry = PvhEntry::write(&mem, 0x100_0000, 0x6000).unwrap();
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            cr4: X86_CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        entry.apply_to_sregs(&mut sregs);
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.db, sregs.cs.l, sregs.cs.selector), (1, 0, 0x08));
        assert_eq!((sregs.ss.db, sregs.ds.limit), (1, 0xffff_ffff));
        let raw: u64 = mem
            .read_obj(GuestAddress(BOOT_GDT_START + u64::from(sregs.cs.selector)))
            .unwrap();
        assert_eq!(gdt::GdtEntry(raw).segment(CODE_INDEX), sregs.cs);
        let regs = entry.regs();
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0000, 0x6000, 2));
    }

    #[test]
    fn too_little_memory_is_an_error_not_a_panic() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(LongModeEntry::write(&mem, 0x100).is_err());
    }
}
