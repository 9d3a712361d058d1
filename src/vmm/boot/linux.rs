//! Loading Linux into guest memory and describing the machine to it, without a firmware.
//!
//! Kernel formats and how each one starts (what [`load_kernel`] decides):
//!
//! | image | protocol | vCPU state at entry |
//! |---|---|---|
//! | ELF `vmlinux` with a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) | PVH | 32-bit protected mode, paging off, `ebx` = [`hvm_start_info`] |
//! | ELF `vmlinux` without one | 64-bit boot protocol | long mode, identity-mapped, `rsi` = zero page |
//! | bzImage | 64-bit boot protocol (entry `load + 0x200`) | the same |
//!
//! Either way the guest learns where its RAM is from [`memory_map`] (PVH memory map or the
//! zero page's e820 table), finds its command line at [`CMDLINE_START`] and its initrd where
//! [`initrd_address`] put it: as high as possible in RAM below the 32-bit MMIO gap, above the
//! kernel. Everything is checked against the VM's memory before a byte is written, so a
//! kernel or initrd that does not fit is an error that says how much memory to ask for.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::vmm::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_END, HIMEM_START, MMIO_GAP_START, MPTABLE_START,
    PVH_MEMMAP, PVH_MEMMAP_MAX_ENTRIES, PVH_MODLIST, PVH_START_INFO, ZERO_PAGE_START,
};
use crate::vmm::memory::{self, GuestMemory, MemoryError};

/// What a kernel command line starts with unless the caller gives its own: the serial console,
/// reboot through the i8042 (which ends the VM), reboot at once on a panic, no PCI probing,
/// an i8042 driver that does not probe for a mouse or a multiplexer we do not emulate, and
/// one 8250 UART (the VMM has COM1 only: probing the three other legacy ports cost 18 port
/// exits per boot, docs/testbed.md).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule \
                                   i8042.noaux i8042.nomux i8042.dumbkbd 8250.nr_uarts=1";

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `boot_params.hdr.boot_flag`.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `boot_params.hdr.header`: "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: a boot loader without an assigned ID.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `kernel_alignment` for a kernel without a setup header (the x86 default).
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// A bzImage's 64-bit entry point, from where its protected-mode part is loaded.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;
const MIB: u64 = 1 << 20;

/// Kinds of memory-map entries (the e820 types, which PVH uses too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Ram = 1,
    Reserved = 2,
}

/// One range of the guest-physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    #[error(
        "cannot open kernel image {path}: {source}; build it with kernel/build.sh or pass --kernel"
    )]
    KernelOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a Linux kernel for x86_64: expected an ELF vmlinux or a bzImage \
         (kernel/build.sh builds one)"
    )]
    NotAKernel { path: PathBuf },
    #[error("cannot load kernel image {path}: {source}; is the file complete?")]
    KernelLoad {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error(
        "kernel image {path} needs guest RAM up to {needed_mib} MiB but the VM has only \
         {memory_mib} MiB below the MMIO gap: ask for more with --memory"
    )]
    KernelTooBig {
        path: PathBuf,
        needed_mib: u64,
        memory_mib: u64,
    },
    #[error(
        "cannot read initrd {path}: {source}; check the path (rootfs/build-test-initramfs.sh \
         builds a test one)"
    )]
    InitrdOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the initrd ({initrd_kib} KiB) does not fit in guest RAM between the kernel's end \
         ({kernel_end_mib} MiB) and the top of RAM below the MMIO gap ({low_ram_mib} MiB): \
         ask for more with --memory"
    )]
    InitrdTooBig {
        initrd_kib: u64,
        kernel_end_mib: u64,
        low_ram_mib: u64,
    },
    #[error("cannot copy the initrd {path} into guest memory: {source}")]
    InitrdLoad {
        path: PathBuf,
        #[source]
        source: GuestMemoryError,
    },
    #[error(
        "invalid kernel command line: {0}; it must be printable ASCII and at most \
         {CMDLINE_MAX_SIZE} bytes"
    )]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the {what} at guest address {addr:#x}: {source}")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
    #[error(
        "the memory map has {0} entries, more than the boot structures hold; this is a bug in \
         peapod's memory layout"
    )]
    MemoryMapTooLong(usize),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode at `entry` with `ebx` = [`PVH_START_INFO`].
    Pvh { entry: u64 },
    /// The Linux 64-bit boot protocol: long mode at `entry` with `rsi` = [`ZERO_PAGE_START`].
    Linux64 { entry: u64 },
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub protocol: BootProtocol,
    /// The first address past the kernel (its bss, or for a bzImage the room it needs to
    /// decompress): where an initrd may start.
    pub end: u64,
    /// A bzImage's setup header (the zero page starts from it).
    pub setup_header: Option<setup_header>,
}

/// The end of RAM below the MMIO gap for a VM of `mem_size` bytes.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The highest address an ELF image's loadable segments reach (`p_paddr + p_memsz`), read
/// from its headers; `None` if `image` is not a 64-bit little-endian ELF file or its program
/// headers are out of range.
pub fn elf_load_end(image: &mut (impl Read + Seek)) -> Option<u64> {
    let mut ehdr = [0u8; 64];
    image.seek(SeekFrom::Start(0)).ok()?;
    image.read_exact(&mut ehdr).ok()?;
    // ELF magic, 64-bit, little endian.
    if &ehdr[0..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u16_at(&ehdr, 0x36);
    let phnum = u16_at(&ehdr, 0x38);
    if usize::from(phentsize) < 56 {
        return None;
    }
    let mut end = 0u64;
    for i in 0..u64::from(phnum) {
        let mut phdr = [0u8; 56];
        image
            .seek(SeekFrom::Start(
                phoff.checked_add(i * u64::from(phentsize))?,
            ))
            .ok()?;
        image.read_exact(&mut phdr).ok()?;
        const PT_LOAD: u32 = 1;
        if u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]) != PT_LOAD {
            continue;
        }
        let paddr = u64_at(&phdr, 0x18);
        let memsz = u64_at(&phdr, 0x28);
        end = end.max(paddr.checked_add(memsz)?);
    }
    Some(end)
}

/// Loads the kernel at `path` into `mem` (whose size is `mem_size`), choosing the protocol
/// as the module documentation describes.
pub fn load_kernel(
    mem: &GuestMemory,
    mem_size: u64,
    path: &Path,
) -> Result<LoadedKernel, LinuxBootError> {
    let mut file = File::open(path).map_err(|source| LinuxBootError::KernelOpen {
        path: path.to_path_buf(),
        source,
    })?;
    let low_end = low_ram_end(mem_size);
    let too_big = |needed: u64| LinuxBootError::KernelTooBig {
        path: path.to_path_buf(),
        needed_mib: needed.div_ceil(MIB),
        memory_mib: low_end / MIB,
    };
    let load_error = |source| LinuxBootError::KernelLoad {
        path: path.to_path_buf(),
        source,
    };

    if let Some(end) = elf_load_end(&mut file) {
        if end > low_end {
            return Err(too_big(end));
        }
        let loaded =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_error)?;
        let entry = loaded.kernel_load.0;
        let protocol = match loaded.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => BootProtocol::Pvh { entry: addr.0 },
            _ => BootProtocol::Linux64 { entry },
        };
        return Ok(LoadedKernel {
            protocol,
            end: loaded.kernel_end.max(end),
            setup_header: None,
        });
    }

    let loaded = match BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(loaded) => loaded,
        Err(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage
            | linux_loader::loader::bzimage::Error::ReadBzImageHeader
            | linux_loader::loader::bzimage::Error::Underflow,
        )) => {
            return Err(LinuxBootError::NotAKernel {
                path: path.to_path_buf(),
            });
        }
        Err(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel,
        )) => {
            return Err(too_big(
                file.metadata().map_or(0, |m| m.len()) + HIMEM_START,
            ));
        }
        Err(e) => return Err(load_error(e)),
    };
    let hdr = loaded.setup_header.unwrap_or_default();
    // The kernel decompresses itself in place and needs `init_size` bytes from its load
    // address to do so.
    let end = (loaded.kernel_load.0 + u64::from(hdr.init_size)).max(loaded.kernel_end);
    if end > low_end {
        return Err(too_big(end));
    }
    Ok(LoadedKernel {
        protocol: BootProtocol::Linux64 {
            entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        },
        end,
        setup_header: Some(hdr),
    })
}

/// The guest's memory map for `mem_size` bytes of RAM: the RAM ranges of
/// [`memory::ram_ranges`] minus the legacy hole from the MP table to 1 MiB (EBDA, video,
/// ROMs), where nothing is RAM on a PC.
pub fn memory_map(mem_size: u64) -> Result<Vec<MemoryMapEntry>, LinuxBootError> {
    let mut map = Vec::new();
    for (start, len) in memory::ram_ranges(mem_size)? {
        let (start, end) = (start.0, start.0 + len as u64);
        for (lo, hi) in [
            (start, end.min(MPTABLE_START)),
            (start.max(HIMEM_START), end),
        ] {
            if lo < hi {
                map.push(MemoryMapEntry {
                    addr: lo,
                    size: hi - lo,
                    kind: MemoryKind::Ram,
                });
            }
        }
    }
    // The MP table's kilobyte, so that nothing takes it for free memory.
    map.push(MemoryMapEntry {
        addr: MPTABLE_START,
        size: EBDA_END - MPTABLE_START,
        kind: MemoryKind::Reserved,
    });
    map.sort_by_key(|e| e.addr);
    Ok(map)
}

/// Where an initrd of `size` bytes goes: page-aligned, as high as possible in RAM below the
/// MMIO gap (Linux finds it there whatever the protocol), and not below `kernel_end`.
pub fn initrd_address(mem_size: u64, kernel_end: u64, size: u64) -> Result<u64, LinuxBootError> {
    let low_end = low_ram_end(mem_size);
    let too_big = || LinuxBootError::InitrdTooBig {
        initrd_kib: size.div_ceil(1024),
        kernel_end_mib: kernel_end.div_ceil(MIB),
        low_ram_mib: low_end / MIB,
    };
    let addr = low_end.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    let kernel_end = kernel_end
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX);
    if addr < kernel_end {
        return Err(too_big());
    }
    Ok(addr)
}

/// An initrd in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

/// Copies the initrd at `path` to the place [`initrd_address`] picks.
pub fn load_initrd(
    mem: &GuestMemory,
    mem_size: u64,
    kernel_end: u64,
    path: &Path,
) -> Result<LoadedInitrd, LinuxBootError> {
    let open_error = |source| LinuxBootError::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_error)?;
    let size = file.metadata().map_err(open_error)?.len();
    let addr = initrd_address(mem_size, kernel_end, size)?;
    let len = usize::try_from(size).map_err(|_| LinuxBootError::InitrdTooBig {
        initrd_kib: size / 1024,
        kernel_end_mib: kernel_end / MIB,
        low_ram_mib: low_ram_end(mem_size) / MIB,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| LinuxBootError::InitrdLoad {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(LoadedInitrd { addr, size })
}

/// The kernel command line: `base` ([`DEFAULT_CMDLINE`] when `None`), then `fragments` (one
/// per attached device, e.g. `virtio_mmio.device=4K@0xd0000000:5`).
pub fn kernel_cmdline(base: Option<&str>, fragments: &[String]) -> Result<Cmdline, LinuxBootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LinuxBootError::Cmdline)?;
    let base = base.unwrap_or(DEFAULT_CMDLINE).trim();
    if !base.is_empty() {
        cmdline.insert_str(base).map_err(LinuxBootError::Cmdline)?;
    }
    for fragment in fragments {
        cmdline
            .insert_str(fragment)
            .map_err(LinuxBootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Writes `cmdline` (NUL-terminated) at [`CMDLINE_START`]; returns its length without the NUL.
pub fn write_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, LinuxBootError> {
    let text = cmdline.as_cstring().map_err(LinuxBootError::Cmdline)?;
    let bytes = text.as_bytes_with_nul();
    write(mem, "kernel command line", CMDLINE_START, bytes)?;
    Ok(bytes.len() - 1)
}

/// The PVH start info for `memmap` and an optional initrd (the only module).
pub fn pvh_start_info(
    memmap_entries: usize,
    initrd: Option<LoadedInitrd>,
) -> Result<hvm_start_info, LinuxBootError> {
    if memmap_entries > PVH_MEMMAP_MAX_ENTRIES {
        return Err(LinuxBootError::MemoryMapTooLong(memmap_entries));
    }
    Ok(hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { PVH_MODLIST } else { 0 },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: 0,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap_entries as u32,
        reserved: 0,
    })
}

/// Writes the PVH start info, its module list (the initrd) and memory map.
pub fn write_pvh_boot_info(
    mem: &GuestMemory,
    memmap: &[MemoryMapEntry],
    initrd: Option<LoadedInitrd>,
) -> Result<(), LinuxBootError> {
    let start_info = pvh_start_info(memmap.len(), initrd)?;
    for (i, e) in memmap.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let addr = PVH_MEMMAP + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write_obj(mem, "PVH memory map", addr, entry)?;
    }
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        write_obj(mem, "PVH module list", PVH_MODLIST, module)?;
    }
    write_obj(mem, "PVH start info", PVH_START_INFO, start_info)
}

/// The zero page (`boot_params`) for the 64-bit boot protocol: the bzImage's setup header if
/// there is one, loader fields, command line, initrd and the e820 map.
pub fn zero_page(
    setup_header: Option<setup_header>,
    memmap: &[MemoryMapEntry],
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
) -> Result<boot_params, LinuxBootError> {
    let mut params = boot_params::default();
    if memmap.len() > params.e820_table.len() {
        return Err(LinuxBootError::MemoryMapTooLong(memmap.len()));
    }
    params.hdr = setup_header.unwrap_or_default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        // Both fit in 32 bits: the initrd lies below the MMIO gap.
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(memmap) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = memmap.len() as u8;
    Ok(params)
}

/// Writes [`zero_page`] at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemory, params: boot_params) -> Result<(), LinuxBootError> {
    write_obj(mem, "zero page", ZERO_PAGE_START, params)
}

fn write(
    mem: &GuestMemory,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LinuxBootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LinuxBootError::Write { what, addr, source })
}

fn write_obj<T: vm_memory::ByteValued>(
    mem: &GuestMemory,
    what: &'static str,
    addr: u64,
    value: T,
) -> Result<(), LinuxBootError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| LinuxBootError::Write { what, addr, source })
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;
    use crate::vmm::layout::MMIO_GAP_END;
    use crate::vmm::memory::create_guest_memory;

    const GIB: u64 = 1 << 30;

    fn ram(map: &[MemoryMapEntry]) -> Vec<(u64, u64)> {
        map.iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| (e.addr, e.addr + e.size))
            .collect()
    }

    #[test]
    fn the_memory_map_below_the_gap_skips_the_legacy_hole() {
        let map = memory_map(256 * MIB).unwrap();
        assert_eq!(
            ram(&map),
            vec![(0, MPTABLE_START), (HIMEM_START, 256 * MIB)]
        );
        assert!(map.contains(&MemoryMapEntry {
            addr: MPTABLE_START,
            size: 0x400,
            kind: MemoryKind::Reserved
        }));
        // Sorted, no overlaps.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{map:x?}");
        }
    }

    #[test]
    fn the_memory_map_above_the_gap_continues_at_4_gib() {
        let map = memory_map(4 * GIB).unwrap();
        assert_eq!(
            ram(&map),
            vec![
                (0, MPTABLE_START),
                (HIMEM_START, MMIO_GAP_START),
                (MMIO_GAP_END, MMIO_GAP_END + GIB)
            ]
        );
        let total: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(total, 4 * GIB - (HIMEM_START - MPTABLE_START));
        // Exactly at the gap: nothing above it.
        assert_eq!(ram(&memory_map(MMIO_GAP_START).unwrap()).len(), 2);
    }

    #[test]
    fn bad_memory_sizes_are_memory_errors() {
        assert!(matches!(
            memory_map(1 << 20),
            Err(LinuxBootError::Memory(MemoryError::TooSmall { .. }))
        ));
    }

    #[test]
    fn the_initrd_goes_high_page_aligned_and_above_the_kernel() {
        let mem = 512 * MIB;
        let addr = initrd_address(mem, 20 * MIB, 5000).unwrap();
        assert_eq!(addr, mem - 0x2000);
        assert_eq!(addr % PAGE_SIZE, 0);
        // Large memory: still below the gap.
        let addr = initrd_address(8 * GIB, 20 * MIB, 10 * MIB).unwrap();
        assert_eq!(addr, MMIO_GAP_START - 10 * MIB);
        // Exactly fits above the (page-rounded) kernel end.
        assert_eq!(
            initrd_address(32 * MIB, 16 * MIB + 1, 16 * MIB - PAGE_SIZE).unwrap(),
            16 * MIB + PAGE_SIZE
        );
    }

    #[test]
    fn an_initrd_that_does_not_fit_names_sizes_and_the_fix() {
        for (mem, kernel_end, size) in [
            (32 * MIB, 30 * MIB, 4 * MIB),
            (32 * MIB, 16 * MIB, 64 * MIB),
            (32 * MIB, 16 * MIB + 1, 16 * MIB),
        ] {
            let err = initrd_address(mem, kernel_end, size).unwrap_err();
            assert!(matches!(err, LinuxBootError::InitrdTooBig { .. }), "{err}");
            assert!(err.to_string().contains("--memory"), "{err}");
        }
    }

    #[test]
    fn the_cmdline_is_the_base_then_the_device_fragments() {
        let c = kernel_cmdline(None, &[]).unwrap();
        assert_eq!(c.as_cstring().unwrap().to_str().unwrap(), DEFAULT_CMDLINE);
        let frags = vec![
            "virtio_mmio.device=4K@0xd0000000:5".to_string(),
            "virtio_mmio.device=4K@0xd0001000:6".to_string(),
        ];
        let c = kernel_cmdline(Some("  console=ttyS0 quiet "), &frags).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
        );
        let c = kernel_cmdline(Some(""), &frags[..1]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }

    #[test]
    fn a_bad_cmdline_is_refused() {
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(matches!(
            kernel_cmdline(Some(&long), &[]),
            Err(LinuxBootError::Cmdline(_))
        ));
        assert!(kernel_cmdline(Some("a\u{1}b"), &[]).is_err());
    }

    #[test]
    fn the_cmdline_lands_nul_terminated() {
        let mem = create_guest_memory(4 * MIB).unwrap();
        let c = kernel_cmdline(Some("console=ttyS0"), &[]).unwrap();
        let len = write_cmdline(&mem, &c).unwrap();
        assert_eq!(len, 13);
        let mut back = [0u8; 14];
        mem.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=ttyS0\0");
    }

    #[test]
    fn pvh_start_info_points_at_the_memmap_cmdline_and_initrd() {
        let mem = create_guest_memory(64 * MIB).unwrap();
        let map = memory_map(64 * MIB).unwrap();
        let initrd = LoadedInitrd {
            addr: 60 * MIB,
            size: 12345,
        };
        write_pvh_boot_info(&mem, &map, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(
            (info.memmap_paddr, info.memmap_entries as usize),
            (PVH_MEMMAP, map.len())
        );
        for (i, e) in map.iter().enumerate() {
            let got: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(PVH_MEMMAP + 24 * i as u64))
                .unwrap();
            assert_eq!(
                (got.addr, got.size, got.type_),
                (e.addr, e.size, e.kind as u32)
            );
        }
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, PVH_MODLIST));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST)).unwrap();
        assert_eq!((module.paddr, module.size), (60 * MIB, 12345));

        let info = pvh_start_info(3, None).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert!(matches!(
            pvh_start_info(PVH_MEMMAP_MAX_ENTRIES + 1, None),
            Err(LinuxBootError::MemoryMapTooLong(_))
        ));
    }

    #[test]
    fn the_zero_page_carries_the_e820_map_cmdline_and_initrd() {
        let map = memory_map(4 * GIB).unwrap();
        let initrd = LoadedInitrd {
            addr: 0xbf00_0000,
            size: 0x10_0000,
        };
        let params = zero_page(None, &map, 42, Some(initrd)).unwrap();
        assert_eq!(params.e820_entries as usize, map.len());
        let e = params.e820_table[map.len() - 1];
        assert_eq!((e.addr, e.size, e.r#type), (MMIO_GAP_END, GIB, 1));
        let hdr = params.hdr;
        assert_eq!(
            (hdr.boot_flag, hdr.header, hdr.type_of_loader),
            (0xaa55, 0x5372_6448, 0xff)
        );
        assert_eq!(
            (hdr.cmd_line_ptr, hdr.cmdline_size),
            (CMDLINE_START as u32, 42)
        );
        assert_eq!(
            (hdr.ramdisk_image, hdr.ramdisk_size),
            (0xbf00_0000, 0x10_0000)
        );
        // A bzImage's own header fields survive.
        let bz = setup_header {
            setup_sects: 27,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let params = zero_page(Some(bz), &map, 1, None).unwrap();
        let hdr = params.hdr;
        assert_eq!((hdr.setup_sects, hdr.kernel_alignment), (27, 0x20_0000));
        assert_eq!({ hdr.ramdisk_image }, 0);
    }

    /// A minimal ELF64 file with one PT_LOAD segment at `paddr` of `memsz` bytes.
    fn tiny_elf(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1; // version
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // executable
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // entry
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let p = 64;
        let len = f.len() as u64;
        f[p..p + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[p + 0x08..p + 0x10].copy_from_slice(&0u64.to_le_bytes()); // offset
        f[p + 0x10..p + 0x18].copy_from_slice(&paddr.to_le_bytes()); // vaddr
        f[p + 0x18..p + 0x20].copy_from_slice(&paddr.to_le_bytes()); // paddr
        f[p + 0x20..p + 0x28].copy_from_slice(&len.to_le_bytes()); // filesz
        f[p + 0x28..p + 0x30].copy_from_slice(&memsz.to_le_bytes()); // memsz
        f
    }

    #[test]
    fn elf_load_end_reads_the_program_headers() {
        let elf = tiny_elf(16 * MIB, 3 * MIB);
        assert_eq!(elf_load_end(&mut Cursor::new(elf)), Some(19 * MIB));
        assert_eq!(elf_load_end(&mut Cursor::new(b"garbage".to_vec())), None);
        assert_eq!(elf_load_end(&mut Cursor::new(vec![0u8; 4096])), None);
        // Program headers past the end of the file.
        let mut elf = tiny_elf(16 * MIB, 3 * MIB);
        elf[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_load_end(&mut Cursor::new(elf)), None);
    }

    fn kernel_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn an_elf_kernel_loads_and_uses_the_64_bit_protocol_without_a_pvh_note() {
        let mem = create_guest_memory(32 * MIB).unwrap();
        let f = kernel_file(&tiny_elf(16 * MIB, 2 * MIB));
        let k = load_kernel(&mem, 32 * MIB, f.path()).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64 { entry: 16 * MIB });
        assert_eq!(k.end, 18 * MIB);
        let magic: [u8; 4] = mem.read_obj(GuestAddress(16 * MIB)).unwrap();
        assert_eq!(&magic, b"\x7fELF");
    }

    #[test]
    fn a_kernel_that_does_not_fit_asks_for_more_memory() {
        let mem = create_guest_memory(16 * MIB).unwrap();
        let f = kernel_file(&tiny_elf(16 * MIB, 2 * MIB));
        let err = load_kernel(&mem, 16 * MIB, f.path()).unwrap_err();
        assert!(
            matches!(
                err,
                LinuxBootError::KernelTooBig {
                    needed_mib: 18,
                    memory_mib: 16,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--memory"), "{err}");
    }

    #[test]
    fn garbage_and_missing_kernels_are_named() {
        let mem = create_guest_memory(32 * MIB).unwrap();
        for garbage in [&b"this is not a kernel"[..], &[0u8; 8192][..], &[][..]] {
            let f = kernel_file(garbage);
            let err = load_kernel(&mem, 32 * MIB, f.path()).unwrap_err();
            assert!(matches!(err, LinuxBootError::NotAKernel { .. }), "{err:?}");
            assert!(err.to_string().contains("not a Linux kernel"), "{err}");
        }
        let err = load_kernel(&mem, 32 * MIB, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(err, LinuxBootError::KernelOpen { .. }), "{err:?}");
        assert!(err.to_string().contains("--kernel"), "{err}");
    }

    #[test]
    fn an_initrd_is_copied_and_a_missing_one_is_named() {
        let mem = create_guest_memory(32 * MIB).unwrap();
        let f = kernel_file(b"initrd bytes");
        let initrd = load_initrd(&mem, 32 * MIB, 18 * MIB, f.path()).unwrap();
        assert_eq!(
            initrd,
            LoadedInitrd {
                addr: 32 * MIB - PAGE_SIZE,
                size: 12
            }
        );
        let mut back = [0u8; 12];
        mem.read_slice(&mut back, GuestAddress(initrd.addr))
            .unwrap();
        assert_eq!(&back, b"initrd bytes");
        let err =
            load_initrd(&mem, 32 * MIB, 18 * MIB, Path::new("/nonexistent/initrd")).unwrap_err();
        assert!(matches!(err, LinuxBootError::InitrdOpen { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/initrd"), "{err}");
    }
}
