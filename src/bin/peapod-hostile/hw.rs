//! The two things the program touches below Rust's safety: a device's virtio-mmio register
//! window, mapped through `/dev/mem`, and pages of its own memory that it hands to devices
//! by guest-physical address. Each access is a small wrapper over a volatile read or write at
//! an offset checked against the mapping; nothing else in the program is `unsafe`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// A page, the unit of everything here.
pub const PAGE: usize = 4096;

/// One mapped region: `len` bytes at `ptr`, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// `mmap` with the given flags over `fd` at `offset` (`fd` = -1 for anonymous memory).
    fn new(len: usize, flags: libc::c_int, fd: libc::c_int, offset: u64) -> Result<Self, String> {
        let offset = libc::off_t::try_from(offset).map_err(|_| format!("offset {offset:#x}"))?;
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address), so it aliases no
        // Rust object; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The address of a `T` at `offset`, if it lies inside the mapping.
    fn at<T>(&self, offset: usize) -> Option<*mut T> {
        let end = offset.checked_add(std::mem::size_of::<T>())?;
        // SAFETY: `offset` is inside the mapping (checked just above), so the pointer stays
        // in the same allocation.
        (end <= self.len).then(|| unsafe { self.ptr.add(offset) }.cast())
    }

    /// A volatile read of a `T` at `offset`; zero if it would leave the mapping. May be
    /// unaligned on purpose (register windows are probed with unaligned accesses).
    fn read<T: Copy + Default>(&self, offset: usize) -> T {
        match self.at::<T>(offset) {
            // SAFETY: the pointer is inside our own live mapping (see `at`); `T` is plain
            // data, valid for any bits; x86 allows unaligned accesses.
            Some(p) => unsafe { p.read_volatile() },
            None => T::default(),
        }
    }

    /// A volatile write of `value` at `offset`; nothing if it would leave the mapping.
    fn write<T: Copy>(&self, offset: usize, value: T) {
        if let Some(p) = self.at::<T>(offset) {
            // SAFETY: as in `read`; the mapping is writable and no Rust reference points
            // into it.
            unsafe { p.write_volatile(value) }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no pointer into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A device's 4 KiB virtio-mmio register window.
pub struct Window {
    map: Mapping,
}

impl Window {
    /// Maps the window at guest-physical `base` through `/dev/mem` (uncached: O_SYNC).
    pub fn map(base: u64) -> Result<Self, String> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open("/dev/mem")
            .map_err(|e| format!("/dev/mem: {e} (a kernel with CONFIG_DEVMEM, run as root)"))?;
        let map = Mapping::new(PAGE, libc::MAP_SHARED, mem.as_raw_fd(), base)
            .map_err(|e| format!("mapping {base:#x} from /dev/mem: {e}"))?;
        Ok(Window { map })
    }

    pub fn r8(&self, off: usize) -> u8 {
        self.map.read(off)
    }
    pub fn r16(&self, off: usize) -> u16 {
        self.map.read(off)
    }
    pub fn r32(&self, off: usize) -> u32 {
        self.map.read(off)
    }
    pub fn r64(&self, off: usize) -> u64 {
        self.map.read(off)
    }
    pub fn w8(&self, off: usize, v: u8) {
        self.map.write(off, v)
    }
    pub fn w16(&self, off: usize, v: u16) {
        self.map.write(off, v)
    }
    pub fn w32(&self, off: usize, v: u32) {
        self.map.write(off, v)
    }
    pub fn w64(&self, off: usize, v: u64) {
        self.map.write(off, v)
    }
}

/// Pages of our own memory, locked so that they stay where the devices are told they are,
/// each with its guest-physical address from `/proc/self/pagemap`. The pages are not
/// physically contiguous, so every ring and buffer lives inside one page.
pub struct Dma {
    map: Mapping,
    phys: Vec<u64>,
}

impl Dma {
    pub fn new(pages: usize) -> Result<Self, String> {
        let len = pages * PAGE;
        let map = Mapping::new(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
            -1,
            0,
        )
        .map_err(|e| format!("allocating {pages} pages: {e}"))?;
        // SAFETY: locks our own mapping; no memory is read or written.
        if unsafe { libc::mlock(map.ptr.cast(), len) } != 0 {
            return Err(format!("mlock: {}", std::io::Error::last_os_error()));
        }
        let mut pagemap =
            File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
        let mut phys = Vec::with_capacity(pages);
        for i in 0..pages {
            // Touch it so that it is backed by a page of its own (not the shared zero page).
            map.write(i * PAGE, 0u8);
            let vpn = (map.ptr as usize + i * PAGE) / PAGE;
            let mut entry = [0u8; 8];
            pagemap
                .seek(SeekFrom::Start(vpn as u64 * 8))
                .and_then(|_| pagemap.read_exact(&mut entry))
                .map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
            let entry = u64::from_le_bytes(entry);
            let pfn = entry & ((1 << 55) - 1);
            if entry >> 63 == 0 || pfn == 0 {
                return Err("pagemap shows no page frame (not root?)".into());
            }
            phys.push(pfn * PAGE as u64);
        }
        Ok(Dma { map, phys })
    }

    /// The guest-physical address of byte `off` of page `page`.
    pub fn phys(&self, page: usize, off: usize) -> u64 {
        self.phys.get(page).copied().unwrap_or(0) + off as u64
    }

    pub fn read<T: Copy + Default>(&self, page: usize, off: usize) -> T {
        self.map.read(page * PAGE + off)
    }

    pub fn write<T: Copy>(&self, page: usize, off: usize, value: T) {
        self.map.write(page * PAGE + off, value)
    }

    pub fn fill(&self, page: usize, byte: u8) {
        for off in (0..PAGE).step_by(8) {
            self.write(page, off, u64::from_ne_bytes([byte; 8]));
        }
    }

    pub fn bytes(&self, page: usize, off: usize, len: usize) -> Vec<u8> {
        (off..off + len).map(|o| self.read::<u8>(page, o)).collect()
    }
}
