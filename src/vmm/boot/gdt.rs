//! Global descriptor table entries for entering 64-bit mode directly, and the `kvm_segment`
//! each one loads into a segment register (KVM wants the cached, decoded form).

use kvm_bindings::kvm_segment;

/// One 8-byte GDT descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdtEntry(pub u64);

impl GdtEntry {
    /// Packs a descriptor. `flags` holds the access byte in bits 0..8 and the flags nibble
    /// (G, D/B, L, AVL) in bits 12..16, as in the usual `0xa09b` notation; `limit` is 20 bits.
    pub const fn new(flags: u16, base: u32, limit: u32) -> Self {
        let base = base as u64;
        let limit = limit as u64;
        let flags = flags as u64;
        GdtEntry(
            ((base & 0xff00_0000) << 32)
                | ((flags & 0xf0ff) << 40)
                | ((limit & 0x000f_0000) << 32)
                | ((base & 0x00ff_ffff) << 16)
                | (limit & 0xffff),
        )
    }

    pub fn base(self) -> u64 {
        ((self.0 >> 16) & 0x00ff_ffff) | ((self.0 >> 32) & 0xff00_0000)
    }

    /// The limit in bytes (scaled by 4 KiB when G is set).
    pub fn limit(self) -> u32 {
        let raw = (((self.0 >> 32) & 0x000f_0000) | (self.0 & 0xffff)) as u32;
        if self.g() == 1 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }

    fn bit(self, n: u32) -> u8 {
        ((self.0 >> n) & 1) as u8
    }

    pub fn type_(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }
    /// S: code/data (1) or system (0) descriptor.
    pub fn s(self) -> u8 {
        self.bit(44)
    }
    pub fn dpl(self) -> u8 {
        ((self.0 >> 45) & 0x3) as u8
    }
    pub fn present(self) -> u8 {
        self.bit(47)
    }
    pub fn avl(self) -> u8 {
        self.bit(52)
    }
    /// L: 64-bit code segment.
    pub fn l(self) -> u8 {
        self.bit(53)
    }
    /// D/B: 32-bit default operand size.
    pub fn db(self) -> u8 {
        self.bit(54)
    }
    /// G: limit in 4 KiB units.
    pub fn g(self) -> u8 {
        self.bit(55)
    }

    /// The segment register contents after loading this descriptor from GDT slot `index`.
    pub fn segment(self, index: u16) -> kvm_segment {
        kvm_segment {
            base: self.base(),
            limit: self.limit(),
            selector: index * 8,
            type_: self.type_(),
            present: self.present(),
            dpl: self.dpl(),
            db: self.db(),
            s: self.s(),
            l: self.l(),
            g: self.g(),
            avl: self.avl(),
            padding: 0,
            unusable: u8::from(self.present() == 0),
        }
    }
}

/// GDT slots of the boot GDT.
pub const NULL_INDEX: u16 = 0;
pub const CODE_INDEX: u16 = 1;
pub const DATA_INDEX: u16 = 2;
pub const TSS_INDEX: u16 = 3;

/// The boot GDT: null, 64-bit code, data, and a (never used) TSS that KVM needs in TR.
pub const BOOT_GDT: [GdtEntry; 4] = [
    GdtEntry::new(0, 0, 0),
    // Present, ring 0, code, execute/read, accessed; G and L (64-bit).
    GdtEntry::new(0xa09b, 0, 0xfffff),
    // Present, ring 0, data, read/write, accessed; G and D/B.
    GdtEntry::new(0xc093, 0, 0xfffff),
    // Present, ring 0, system: busy 64-bit TSS.
    GdtEntry::new(0x808b, 0, 0xfffff),
];

/// The GDT for the PVH entry (32-bit protected mode, paging off): null, 32-bit code, data and
/// a 32-bit TSS, in the same slots as [`BOOT_GDT`].
pub const PVH_GDT: [GdtEntry; 4] = [
    GdtEntry::new(0, 0, 0),
    // Present, ring 0, code, execute/read, accessed; G and D/B (32-bit).
    GdtEntry::new(0xc09b, 0, 0xfffff),
    // Present, ring 0, data, read/write, accessed; G and D/B.
    GdtEntry::new(0xc093, 0, 0xfffff),
    // Present, ring 0, system: busy 32-bit TSS of 104 bytes.
    GdtEntry::new(0x008b, 0, 0x67),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let e = GdtEntry::new(0xa09b, 0x1234_5678, 0xabcde);
        assert_eq!(e.base(), 0x1234_5678);
        assert_eq!(e.limit(), 0xabcd_efff); // G set: scaled
        assert_eq!(e.type_(), 0xb);
        assert_eq!((e.s(), e.dpl(), e.present()), (1, 0, 1));
        assert_eq!((e.avl(), e.l(), e.db(), e.g()), (0, 1, 0, 1));
        let e = GdtEntry::new(0x008b, 0xff, 0x67);
        assert_eq!((e.base(), e.limit(), e.g()), (0xff, 0x67, 0));
    }

    #[test]
    fn boot_gdt_has_the_known_encodings() {
        // The descriptors every 64-bit boot GDT uses (Linux, Firecracker, QEMU).
        assert_eq!(BOOT_GDT[0].0, 0);
        assert_eq!(BOOT_GDT[1].0, 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2].0, 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3].0, 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn the_pvh_gdt_has_32_bit_flat_code_and_data() {
        let cs = PVH_GDT[CODE_INDEX as usize].segment(CODE_INDEX);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.limit, cs.type_),
            (0x08, 0, 1, 0xffff_ffff, 0xb)
        );
        let tr = PVH_GDT[TSS_INDEX as usize].segment(TSS_INDEX);
        assert_eq!((tr.s, tr.type_, tr.limit, tr.present), (0, 0xb, 0x67, 1));
        assert_eq!(PVH_GDT[CODE_INDEX as usize].0, 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn segments_are_64_bit_code_and_flat_data() {
        let cs = BOOT_GDT[CODE_INDEX as usize].segment(CODE_INDEX);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.unusable),
            (0x08, 1, 0, 1, 0)
        );
        assert_eq!((cs.s, cs.type_, cs.dpl), (1, 0xb, 0));
        let ds = BOOT_GDT[DATA_INDEX as usize].segment(DATA_INDEX);
        assert_eq!(
            (ds.selector, ds.l, ds.db, ds.limit, ds.type_),
            (0x10, 0, 1, 0xffff_ffff, 3)
        );
        let tr = BOOT_GDT[TSS_INDEX as usize].segment(TSS_INDEX);
        assert_eq!((tr.selector, tr.s, tr.type_), (0x18, 0, 0xb));
        let null = BOOT_GDT[NULL_INDEX as usize].segment(NULL_INDEX);
        assert_eq!(null.unusable, 1);
    }
}
