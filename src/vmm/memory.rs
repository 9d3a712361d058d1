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
/// Each range sits at a 2 MiB-aligned host address, as Firecracker maps guest RAM, so that
/// where the host backs it with transparent huge pages (THP `always`, or hugepages of the
/// host's choosing) KVM maps it with 2 MiB nested entries: a booting guest then takes one
/// nested page fault per 2 MiB it touches instead of one per 4 KiB page (about 5,600 per
/// boot in the test bed, each ~55 µs there). The range is not advised with
/// `MADV_HUGEPAGE`: under THP's default `defrag` policy that makes each fault compact
/// memory synchronously, inside KVM's fault path (a33c4cc did, and its test-bed L1s locked
/// up). The unaligned slack around each range stays mapped without access (guard pages, and
/// no thread stack lands in a 2 MiB hole there). The mappings live as long as the process
/// (one VM per process).
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges = ram_ranges(size)?;
    let map_err = |e: &dyn std::fmt::Display| MemoryError::Map {
        size,
        source: std::io::Error::other(e.to_string()),
    };
    let mut regions = Vec::with_capacity(ranges.len());
    for (base, len) in ranges {
        let ptr = map_aligned(len).map_err(|source| MemoryError::Map { size, source })?;
        // SAFETY: `ptr..ptr + len` is a read-write mapping made just above for this region
        // alone, which stays mapped for the rest of the process.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(ptr) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(RAM_FLAGS)
            .build()
            .map_err(|e| map_err(&e))?;
        regions.push(GuestRegionMmap::new(region, base).ok_or(MemoryError::TooLarge { size })?);
    }
    GuestMemory::from_regions(regions).map_err(|e| map_err(&e))
}

/// The alignment of guest RAM in the host's address space.
pub const HUGE_PAGE: usize = 2 << 20;
const RAM_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// An anonymous read-write mapping of `len` bytes at a 2 MiB-aligned address, inside a
/// reservation 2 MiB larger whose slack stays inaccessible.
fn map_aligned(len: usize) -> std::io::Result<*mut u8> {
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing; it touches no
    // existing memory, and the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            RAM_FLAGS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let aligned = (base as usize).next_multiple_of(HUGE_PAGE);
    // SAFETY: `aligned..aligned + len` lies inside the reservation made above
    // (`aligned - base < HUGE_PAGE`), which nothing else uses.
    if unsafe {
        libc::mprotect(
            aligned as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    } != 0
    {
        let e = std::io::Error::last_os_error();
        // SAFETY: unmaps the reservation made above, which nothing refers to yet.
        unsafe { libc::munmap(base, total) };
        return Err(e);
    }
    Ok(aligned as *mut u8)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend as _, GuestMemoryRegion};

    use super::*;

    #[test]
    fn guest_ram_sits_at_2_mib_aligned_host_addresses_between_guard_pages() {
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
            // Right after the region: the inaccessible slack of its reservation (there is
            // always some after it: at most 2 MiB - 4 KiB of it lies before).
            let end = host + region.len() as usize;
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let after = maps
                .lines()
                .find(|l| l.starts_with(&format!("{end:x}-")))
                .unwrap_or_else(|| panic!("nothing mapped at {end:x}:\n{maps}"));
            assert!(
                after.contains(" ---p "),
                "the slack after guest RAM: {after}"
            );
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
