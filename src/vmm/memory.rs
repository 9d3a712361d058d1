//! Guest RAM: anonymous host mappings (vm-memory's `GuestMemoryMmap`) laid out around the
//! 32-bit MMIO gap. Everything the VMM writes into the guest goes through vm-memory's `Bytes`
//! (`write_obj`, `write_slice`), which checks every address.

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::vmm::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// The guest's RAM.
pub type GuestMemory = GuestMemoryMmap<()>;

const PAGE_SIZE: u64 = 4096;

/// The least RAM peapod gives a guest: the first megabyte plus room for the built-in guest.
pub const MIN_MEMORY: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {size:#x} is below the minimum of {min} MiB: ask for more memory", min = MIN_MEMORY >> 20)]
    TooSmall { size: u64 },
    #[error("guest memory size {size:#x} is not a multiple of the 4 KiB page size")]
    NotPageAligned { size: u64 },
    #[error("guest memory size {size:#x} does not fit this host's address space")]
    TooLarge { size: u64 },
    #[error(
        "cannot map {size:#x} bytes of guest memory: {source}; free host memory or ask for less"
    )]
    Map {
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The RAM ranges for `size` bytes of guest memory: from 0 up to the MMIO gap, and what does
/// not fit below it from 4 GiB up.
pub fn ram_ranges(size: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if size < MIN_MEMORY {
        return Err(MemoryError::TooSmall { size });
    }
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(MemoryError::NotPageAligned { size });
    }
    let len = |n: u64| usize::try_from(n).map_err(|_| MemoryError::TooLarge { size });
    if size <= MMIO_GAP_START {
        return Ok(vec![(GuestAddress(0), len(size)?)]);
    }
    let above = size - MMIO_GAP_START;
    if MMIO_GAP_END.checked_add(above).is_none() {
        return Err(MemoryError::TooLarge { size });
    }
    Ok(vec![
        (GuestAddress(0), len(MMIO_GAP_START)?),
        (GuestAddress(MMIO_GAP_END), len(above)?),
    ])
}

/// Maps `size` bytes of guest RAM (see [`ram_ranges`]).
///
/// Each range is mapped at a 2 MiB-aligned host address and advised for transparent huge
/// pages (Cloud Hypervisor does the same by default). KVM backs guest memory with 2 MiB
/// (nested) page-table entries only where the host has a huge page and the guest-physical and
/// host-virtual addresses agree modulo 2 MiB; with 4 KiB mappings a booting guest takes a
/// nested page fault per page it touches, which is expensive under nested virtualization.
/// The mappings are not unmapped: they live as long as the process (one VM per process).
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges = ram_ranges(size)?;
    let mut regions = Vec::with_capacity(ranges.len());
    for (base, len) in ranges {
        let ptr = map_huge_aligned(len).map_err(|source| MemoryError::Map { size, source })?;
        // SAFETY: `ptr..ptr + len` is a mapping made just above for this region alone, which
        // stays mapped for the rest of the process.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(ptr) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(RAM_FLAGS)
            .build()
            .map_err(|e| MemoryError::Map {
                size,
                source: std::io::Error::other(e.to_string()),
            })?;
        regions.push(GuestRegionMmap::new(region, base).ok_or(MemoryError::TooLarge { size })?);
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Map {
        size,
        source: std::io::Error::other(e.to_string()),
    })
}

const HUGE_PAGE: usize = 2 << 20;
const RAM_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// An anonymous read-write mapping of `len` bytes at a 2 MiB-aligned address, advised for
/// transparent huge pages (advice the host refuses is ignored: it only costs speed).
fn map_huge_aligned(len: usize) -> std::io::Result<*mut u8> {
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing; it touches no
    // existing memory, and the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            RAM_FLAGS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let aligned = (base as usize).next_multiple_of(HUGE_PAGE);
    // The unaligned slack before and after stays mapped and is never touched (no memory):
    // unmapped, it would leave 2 MiB-aligned holes where the next thread stacks land, and
    // with transparent huge pages on, a stack there costs a whole 2 MiB page.
    // SAFETY: advice on `aligned..aligned + len`, inside the mapping made above.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend as _, GuestMemoryRegion};

    use super::*;

    #[test]
    fn guest_ram_sits_at_2_mib_aligned_host_addresses() {
        let mem = create_guest_memory(MMIO_GAP_START + (6 << 20)).unwrap();
        let mut regions = 0;
        for region in mem.iter() {
            let host = region.as_ptr() as usize;
            assert_eq!(
                host % HUGE_PAGE,
                0,
                "region at {:#x}",
                region.start_addr().0
            );
            assert_eq!(region.start_addr().0 as usize % HUGE_PAGE, 0);
            regions += 1;
        }
        assert_eq!(regions, 2);
        // and it is plain, writable, zeroed RAM
        mem.write_obj(0xdead_beefu32, GuestAddress(MMIO_GAP_END + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(MMIO_GAP_END + 8)).unwrap(),
            0xdead_beef
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0);
    }

    #[test]
    fn small_memory_is_one_range_from_zero() {
        assert_eq!(
            ram_ranges(128 << 20).unwrap(),
            vec![(GuestAddress(0), 128 << 20)]
        );
        assert_eq!(
            ram_ranges(MMIO_GAP_START).unwrap(),
            vec![(GuestAddress(0), MMIO_GAP_START as usize)]
        );
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30).unwrap();
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(1 << 32), (1 << 30) as usize)
            ]
        );
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            ram_ranges(1 << 20),
            Err(MemoryError::TooSmall { .. })
        ));
        assert!(matches!(
            ram_ranges((4 << 20) + 1),
            Err(MemoryError::NotPageAligned { .. })
        ));
        assert!(matches!(
            ram_ranges(u64::MAX - 4095),
            Err(MemoryError::TooLarge { .. })
        ));
    }

    #[test]
    fn created_memory_is_writable_and_bounded() {
        let mem = create_guest_memory(4 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 4 << 20);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.write_obj(0u32, GuestAddress(4 << 20)).is_err());
    }
}
