//! An address-range bus: maps non-overlapping ranges of an address space to devices.
//!
//! One type serves both x86 port I/O (16-bit ports, widened to `u64`) and MMIO. A vCPU exit
//! names an address; the bus finds the range that contains it and hands the device the offset
//! into that range. The bus checks only where an access *starts*: how many bytes the guest
//! reads or writes is guest-controlled, and each device must accept any length (ignoring what
//! it does not understand) rather than trust it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device that answers accesses to a range of a bus.
///
/// `offset` is relative to the start of the range the device was inserted at. `data` is as
/// long as the guest's access (for string port I/O, `count * size` bytes) and comes from the
/// guest: a device must handle any length without panicking.
pub trait BusDevice: Send {
    /// A guest read: fill `data` (it arrives zeroed or holding stale bytes).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus (possibly several vCPU threads) and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A half-open address range `[base, base + len)`; `len` is never zero and the end never
/// overflows `u64` (checked by [`BusRange::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusRange {
    base: u64,
    len: u64,
}

impl BusRange {
    pub fn new(base: u64, len: u64) -> Result<Self, BusError> {
        if len == 0 {
            return Err(BusError::ZeroSize { base });
        }
        if base.checked_add(len - 1).is_none() {
            return Err(BusError::Overflow { base, len });
        }
        Ok(BusRange { base, len })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// The number of addresses in the range (never zero).
    pub fn size(&self) -> u64 {
        self.len
    }

    /// The last address inside the range (inclusive; cannot overflow).
    pub fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.base <= addr && addr <= self.last()
    }

    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.base, self.last())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error(
        "cannot insert device `{name}` at {new}: overlaps device `{existing_name}` at {existing}"
    )]
    Overlap {
        name: String,
        new: BusRange,
        existing_name: String,
        existing: BusRange,
    },
    #[error(
        "cannot insert a device of size 0 at {base:#x}: a bus range needs at least one address"
    )]
    ZeroSize { base: u64 },
    #[error("bus range at {base:#x} with length {len:#x} runs past the end of the address space")]
    Overflow { base: u64, len: u64 },
    #[error("no device on the bus at address {0:#x}")]
    NoDevice(u64),
    #[error(
        "device `{0}` is unusable: a previous access panicked while holding its lock; \
         the VM has to be restarted"
    )]
    Poisoned(String),
}

#[derive(Clone)]
struct Entry {
    range: BusRange,
    name: String,
    device: SharedDevice,
}

/// A set of devices on non-overlapping address ranges. Cloning is cheap (devices are shared),
/// so each vCPU thread can hold its own copy.
#[derive(Clone, Default)]
pub struct Bus {
    /// Keyed by range base.
    entries: BTreeMap<u64, Entry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.values().map(|e| (e.range, &e.name)))
            .finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`; `name` is for messages. Fails on an empty or
    /// overflowing range, or one that overlaps a device already on the bus.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        let range = BusRange::new(base, len)?;
        // Only the nearest neighbours can overlap: the last range starting at or before our
        // last address is the one to check (ranges already on the bus are disjoint).
        if let Some((_, e)) = self.entries.range(..=range.last()).next_back()
            && e.range.overlaps(&range)
        {
            return Err(BusError::Overlap {
                name: name.to_string(),
                new: range,
                existing_name: e.name.clone(),
                existing: e.range,
            });
        }
        self.entries.insert(
            base,
            Entry {
                range,
                name: name.to_string(),
                device,
            },
        );
        Ok(())
    }

    /// The device whose range contains `addr`, with the offset of `addr` into that range.
    pub fn lookup(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (offset, e) = self.entry_at(addr).ok()?;
        Some((offset, &e.device))
    }

    /// The name and range of the device containing `addr`.
    pub fn describe(&self, addr: u64) -> Option<(&str, BusRange)> {
        let (_, e) = self.entry_at(addr).ok()?;
        Some((e.name.as_str(), e.range))
    }

    /// Dispatches a read at `addr` to the device there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        let (offset, entry) = self.entry_at(addr)?;
        let mut device = entry
            .device
            .lock()
            .map_err(|_| BusError::Poisoned(entry.name.clone()))?;
        device.read(offset, data);
        Ok(())
    }

    /// Dispatches a write at `addr` to the device there.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        let (offset, entry) = self.entry_at(addr)?;
        let mut device = entry
            .device
            .lock()
            .map_err(|_| BusError::Poisoned(entry.name.clone()))?;
        device.write(offset, data);
        Ok(())
    }

    fn entry_at(&self, addr: u64) -> Result<(u64, &Entry), BusError> {
        self.entries
            .range(..=addr)
            .next_back()
            .map(|(_, e)| e)
            .filter(|e| e.range.contains(addr))
            .map(|e| (addr - e.range.base, e))
            .ok_or(BusError::NoDevice(addr))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every access; reads return `fill`.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub reads: Vec<(u64, usize)>,
        pub writes: Vec<(u64, Vec<u8>)>,
        pub fill: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads.push((offset, data.len()));
            data.fill(self.fill);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    pub(crate) fn recorder(fill: u8) -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder {
            fill,
            ..Recorder::default()
        }))
    }

    #[test]
    fn zero_size_and_overflow_are_rejected() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert("a", 0x10, 0, recorder(0)),
            Err(BusError::ZeroSize { base: 0x10 })
        );
        assert_eq!(
            bus.insert("a", u64::MAX, 2, recorder(0)),
            Err(BusError::Overflow {
                base: u64::MAX,
                len: 2
            })
        );
        // The very last address is fine.
        bus.insert("last", u64::MAX, 1, recorder(0)).unwrap();
        assert!(bus.lookup(u64::MAX).is_some());
    }

    #[test]
    fn overlaps_are_rejected_and_neighbours_accepted() {
        let mut bus = Bus::new();
        bus.insert("serial", 0x3f8, 8, recorder(0)).unwrap();
        for (base, len) in [
            (0x3f8, 8),
            (0x3f0, 9),
            (0x3ff, 1),
            (0x3fa, 1),
            (0x300, 0x200),
        ] {
            let err = bus.insert("x", base, len, recorder(0)).unwrap_err();
            assert!(
                matches!(&err, BusError::Overlap { existing_name, .. } if existing_name == "serial"),
                "{base:#x}+{len:#x}: {err:?}"
            );
        }
        bus.insert("below", 0x3f0, 8, recorder(0)).unwrap();
        bus.insert("above", 0x400, 8, recorder(0)).unwrap();
        let msg = bus
            .insert("x", 0x3f2, 4, recorder(0))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`x`") && msg.contains("`below`"), "{msg}");
    }

    #[test]
    fn lookup_gives_device_and_offset() {
        let mut bus = Bus::new();
        bus.insert("serial", 0x3f8, 8, recorder(0)).unwrap();
        assert!(bus.lookup(0x3f7).is_none());
        assert_eq!(bus.lookup(0x3f8).map(|(o, _)| o), Some(0));
        assert_eq!(bus.lookup(0x3ff).map(|(o, _)| o), Some(7));
        assert!(bus.lookup(0x400).is_none());
        assert_eq!(
            bus.describe(0x3fd),
            Some(("serial", BusRange::new(0x3f8, 8).unwrap()))
        );
        assert!(Bus::new().lookup(0).is_none());
    }

    #[test]
    fn reads_and_writes_reach_the_device_with_offsets() {
        let mut bus = Bus::new();
        let dev = recorder(0xab);
        bus.insert("dev", 0x1000, 0x100, dev.clone()).unwrap();
        bus.write(0x1004, &[1, 2, 3, 4]).unwrap();
        let mut buf = [0u8; 2];
        bus.read(0x10ff, &mut buf).unwrap();
        assert_eq!(buf, [0xab, 0xab]);
        let dev = dev.lock().unwrap();
        assert_eq!(dev.writes, vec![(4, vec![1, 2, 3, 4])]);
        assert_eq!(dev.reads, vec![(0xff, 2)]);
    }

    #[test]
    fn accesses_outside_every_range_are_errors() {
        let mut bus = Bus::new();
        bus.insert("dev", 0x1000, 0x100, recorder(0)).unwrap();
        assert_eq!(bus.write(0x1100, &[1]), Err(BusError::NoDevice(0x1100)));
        assert_eq!(bus.read(0xfff, &mut [0]), Err(BusError::NoDevice(0xfff)));
    }

    #[test]
    fn a_poisoned_device_is_an_error_not_a_panic() {
        let mut bus = Bus::new();
        let dev = recorder(0);
        bus.insert("dev", 0, 1, dev.clone()).unwrap();
        let _ = std::thread::spawn(move || {
            let _guard = dev.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert_eq!(bus.write(0, &[1]), Err(BusError::Poisoned("dev".into())));
    }
}
