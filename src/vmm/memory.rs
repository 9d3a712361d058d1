//! Guest RAM: anonymous host mappings (vm-memory's `GuestMemoryMmap`) laid out around the
//! 32-bit MMIO gap. Everything the VMM writes into the guest goes through vm-memory's `Bytes`
//! (`write_obj`, `write_slice`), which checks every address.

use vm_memory::{GuestAddress, GuestMemoryMmap};

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
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
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
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges = ram_ranges(size)?;
    GuestMemory::from_ranges(&ranges).map_err(|source| MemoryError::Mmap { size, source })
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend as _, GuestMemoryRegion};

    use super::*;

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
