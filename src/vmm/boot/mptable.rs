//! The Intel MultiProcessor Specification (1.4) table: how a guest without ACPI learns how many
//! CPUs it has, where its IOAPIC is and how interrupt lines reach it. Linux looks for the
//! floating pointer ("_MP_") in the last KiB below 640 KiB, where [`write_mptable`] puts it.
//!
//! What the table says, matching KVM's in-kernel irqchip and its default GSI routing:
//!
//! - one processor entry per vCPU, local APIC ID = vCPU index, the first one the BSP;
//! - one ISA bus;
//! - one IOAPIC (ID = number of CPUs) at [`IOAPIC_ADDRESS`];
//! - ISA IRQ *n* → IOAPIC pin *n* for every pin (0..=[`IRQ_LAST`]), conforming polarity and
//!   trigger (edge, active high: what the serial port and virtio-mmio devices raise);
//! - LINT0 of every local APIC is ExtINT (the PIC) and LINT1 is NMI.
//!
//! The table is built as bytes (every field little-endian, as the spec lays it out) and
//! checked: both checksums make their structure sum to zero.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::vmm::layout::{EBDA_END, IOAPIC_ADDRESS, IRQ_LAST, LAPIC_ADDRESS, MPTABLE_START};
use crate::vmm::memory::GuestMemory;

/// xAPIC IDs are 8 bits and one goes to the IOAPIC.
pub const MAX_CPUS: u8 = 254;

const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
/// Entry types.
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
/// Processor flags.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Interrupt types.
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const MPC_APIC_USABLE: u8 = 1;
/// CPU signature (family 6) and feature flags (FPU, APIC) in processor entries; Linux only
/// prints them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ISA_BUS_ID: u8 = 0;

/// Size of the floating pointer structure.
pub const MPF_SIZE: usize = 16;
/// Size of the configuration table header.
pub const MPC_HEADER_SIZE: usize = 44;
/// Size of a processor entry (other entries are 8 bytes).
pub const MPC_CPU_SIZE: usize = 20;
const MPC_ENTRY_SIZE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error(
        "cannot describe {0} vCPUs in an MP table: at most {MAX_CPUS} (xAPIC IDs); ask for fewer with --cpus"
    )]
    TooManyCpus(u8),
    #[error("an MP table needs at least one vCPU")]
    NoCpus,
    #[error(
        "cannot write the MP table at {MPTABLE_START:#x}: {0}; guest memory must cover the \
         first 640 KiB"
    )]
    Write(#[source] GuestMemoryError),
}

/// The number of bytes [`mptable_bytes`] produces for `cpus` vCPUs.
pub fn mptable_size(cpus: u8) -> usize {
    let irqs = IRQ_LAST as usize + 1;
    MPF_SIZE
        + MPC_HEADER_SIZE
        + MPC_CPU_SIZE * usize::from(cpus)
        + MPC_ENTRY_SIZE * (1 + 1 + irqs + 2)
}

/// The floating pointer followed by the configuration table, for a table placed at `base`.
pub fn mptable_bytes(cpus: u8, base: u32) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, APIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&(IOAPIC_ADDRESS as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_LAST as u8 {
        // type, interrupt type, flags (conforming), source bus + IRQ, destination IOAPIC + pin
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT from the PIC; LINT1: NMI; to all local APICs (0xff).
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let table_len = MPC_HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(SPEC_REVISION);
    table.push(0); // checksum, below
    table.extend_from_slice(b"PEAPOD  "); // OEM ID
    table.extend_from_slice(b"MICROVM     "); // product ID
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDRESS as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(base + MPF_SIZE as u32).to_le_bytes()); // the table follows
    mpf.push(1); // length in 16-byte units
    mpf.push(SPEC_REVISION);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0; 5]); // feature bytes: a table is present, no IMCR
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    debug_assert_eq!(mpf.len(), mptable_size(cpus));
    Ok(mpf)
}

/// The byte that makes `bytes` (with that byte zero) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, &b| sum.wrapping_add(b))
        .wrapping_neg()
}

/// Writes the MP table for `cpus` vCPUs at [`MPTABLE_START`].
pub fn write_mptable(mem: &GuestMemory, cpus: u8) -> Result<(), MptableError> {
    let bytes = mptable_bytes(cpus, MPTABLE_START as u32)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

// Up to 37 vCPUs the table fits the reserved KiB below 640 KiB; a larger one runs on into
// the legacy hole (not RAM either, but backed by guest memory), which ends at 1 MiB.
const _: () = assert!(
    MPTABLE_START as usize + MPF_SIZE + MPC_HEADER_SIZE + 28 * 8 + 20 * 37 <= EBDA_END as usize
);
const _: () = assert!(
    MPTABLE_START as usize + MPF_SIZE + MPC_HEADER_SIZE + 28 * 8 + 20 * MAX_CPUS as usize
        <= crate::vmm::layout::HIMEM_START as usize
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::create_guest_memory;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    /// Splits the configuration table into (type, entry bytes).
    fn entries(table: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = MPC_HEADER_SIZE;
        while at < table.len() {
            let len = if table[at] == MP_PROCESSOR {
                MPC_CPU_SIZE
            } else {
                8
            };
            out.push((table[at], table[at..at + len].to_vec()));
            at += len;
        }
        out
    }

    #[test]
    fn the_floating_pointer_sums_to_zero_and_points_at_the_table() {
        let bytes = mptable_bytes(2, 0x9_fc00).unwrap();
        let mpf = &bytes[..MPF_SIZE];
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(sum(mpf), 0);
        assert_eq!(u32_at(mpf, 4), 0x9_fc00 + 16);
        assert_eq!((mpf[8], mpf[9]), (1, 4));
        assert_eq!(mpf[11], 0, "feature byte 1 = 0: the table is present");
    }

    #[test]
    fn the_table_sums_to_zero_and_its_length_and_count_match() {
        for cpus in [1, 2, 8, MAX_CPUS] {
            let bytes = mptable_bytes(cpus, 0x9_fc00).unwrap();
            assert_eq!(bytes.len(), mptable_size(cpus));
            let table = &bytes[MPF_SIZE..];
            assert_eq!(&table[..4], b"PCMP");
            assert_eq!(usize::from(u16_at(table, 4)), table.len());
            assert_eq!(sum(table), 0, "{cpus} CPUs");
            assert_eq!(
                usize::from(u16_at(table, 34)),
                entries(table).len(),
                "entry count"
            );
            assert_eq!(u32_at(table, 36), 0xfee0_0000);
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_with_the_first_as_bsp() {
        let bytes = mptable_bytes(4, 0).unwrap();
        let cpus: Vec<_> = entries(&bytes[MPF_SIZE..])
            .into_iter()
            .filter(|(t, _)| *t == MP_PROCESSOR)
            .map(|(_, e)| (e[1], e[3]))
            .collect();
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn every_irq_is_routed_to_the_same_ioapic_pin() {
        let bytes = mptable_bytes(2, 0).unwrap();
        let all = entries(&bytes[MPF_SIZE..]);
        let ioapic: Vec<_> = all.iter().filter(|(t, _)| *t == MP_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        let io = &ioapic[0].1;
        assert_eq!((io[1], io[3], u32_at(io, 4)), (2, 1, 0xfec0_0000));
        let routes: Vec<_> = all
            .iter()
            .filter(|(t, _)| *t == MP_INTSRC)
            .map(|(_, e)| (e[5], e[6], e[7]))
            .collect();
        assert_eq!(routes.len(), IRQ_LAST as usize + 1);
        for (irq, (src, dst_apic, pin)) in routes.into_iter().enumerate() {
            assert_eq!((src, dst_apic, pin), (irq as u8, 2, irq as u8));
        }
        let lint: Vec<_> = all
            .iter()
            .filter(|(t, _)| *t == MP_LINTSRC)
            .map(|(_, e)| (e[1], e[7]))
            .collect();
        assert_eq!(lint, vec![(MP_EXTINT, 0), (MP_NMI, 1)]);
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        assert!(matches!(mptable_bytes(0, 0), Err(MptableError::NoCpus)));
        let err = mptable_bytes(255, 0).unwrap_err();
        assert!(err.to_string().contains("--cpus"), "{err}");
    }

    #[test]
    fn the_table_lands_at_its_address() {
        let mem = create_guest_memory(2 << 20).unwrap();
        write_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START + 16))
            .unwrap();
        assert_eq!(&sig, b"PCMP");
        let tiny = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_mptable(&tiny, 1),
            Err(MptableError::Write(_))
        ));
    }
}
