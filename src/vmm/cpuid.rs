//! The CPUID a vCPU sees: what KVM can virtualize (`KVM_GET_SUPPORTED_CPUID`), filtered per
//! vCPU by [`filter_cpuid`]. A plain function over `kvm_cpuid_entry2` values, so that every
//! rule is unit-tested on synthetic leaf sets.
//!
//! | leaf | what peapod does |
//! |---|---|
//! | 0x1 | APIC ID (EBX[31:24]) = vCPU index; logical CPU count (EBX[23:16]) and HTT when SMP; hypervisor bit set; TSC-deadline timer when KVM has it; MONITOR, VMX/SMX, thermal and power-management bits cleared |
//! | 0x4 | cores per package = vCPU count; L1/L2 private, L3 shared by all vCPUs |
//! | 0x6 | thermal and power management: only ARAT (the APIC timer always runs) kept |
//! | 0xa | architectural PMU: zeroed (no performance counters in the guest) |
//! | 0xb, 0x1f | x2APIC topology: one thread per core, one core per vCPU, one package; x2APIC ID = vCPU index |
//! | 0x8000_0001 | SVM cleared (no nested virtualization), TOPOEXT cleared (so 0x8000_001e is not read) |
//! | 0x8000_0008 (AMD) | core count = vCPU count |
//! | 0x5, 0x12, 0x14 | dropped: MONITOR/MWAIT, SGX and processor trace need host setup peapod does not do |
//!
//! All vCPUs form one package of single-threaded cores, so Linux's topology (and `nproc`)
//! matches `--cpus`.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaves removed outright.
const DROPPED_LEAVES: [u32; 3] = [0x5, 0x12, 0x14];

/// Leaf 1 bits.
mod leaf1 {
    pub const ECX_MONITOR: u32 = 1 << 3;
    pub const ECX_VMX: u32 = 1 << 5;
    pub const ECX_SMX: u32 = 1 << 6;
    pub const ECX_EIST: u32 = 1 << 7;
    pub const ECX_TM2: u32 = 1 << 8;
    pub const ECX_PDCM: u32 = 1 << 15;
    pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
    pub const ECX_HYPERVISOR: u32 = 1 << 31;
    pub const EDX_ACPI: u32 = 1 << 22;
    pub const EDX_HTT: u32 = 1 << 28;
    pub const EDX_TM: u32 = 1 << 29;
    pub const EDX_PBE: u32 = 1 << 31;
}

const LEAF6_EAX_ARAT: u32 = 1 << 2;
const EXT1_ECX_SVM: u32 = 1 << 2;
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;
/// Leaf 0xb/0x1f level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Which vCPU the CPUID is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its APIC ID.
    pub index: u8,
    /// How many vCPUs the VM has.
    pub count: u8,
}

/// Host features that change what the guest may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidHost {
    /// KVM emulates the local APIC's TSC-deadline mode (`KVM_CAP_TSC_DEADLINE_TIMER`); KVM does
    /// not report it in the supported CPUID, so the VMM has to set it.
    pub tsc_deadline: bool,
}

/// Whether the CPU vendor in leaf 0 is AMD (or Hygon, which follows AMD's layout).
pub fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().find(|e| e.function == 0).is_some_and(|e| {
        let vendor: Vec<u8> = [e.ebx, e.edx, e.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
    })
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn bits_for(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// The CPUID for vCPU `vcpu`, from KVM's supported leaves (see the module documentation).
pub fn filter_cpuid(
    supported: &[kvm_cpuid_entry2],
    vcpu: VcpuTopology,
    host: CpuidHost,
) -> Vec<kvm_cpuid_entry2> {
    let amd = is_amd(supported);
    let apic_id = u32::from(vcpu.index);
    let count = u32::from(vcpu.count.max(1));
    let smp = count > 1;
    let mut out = Vec::with_capacity(supported.len());
    for entry in supported {
        if DROPPED_LEAVES.contains(&entry.function) {
            continue;
        }
        let mut e = *entry;
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24);
                if smp {
                    e.ebx |= count << 16;
                }
                e.ecx &= !(leaf1::ECX_MONITOR
                    | leaf1::ECX_VMX
                    | leaf1::ECX_SMX
                    | leaf1::ECX_EIST
                    | leaf1::ECX_TM2
                    | leaf1::ECX_PDCM
                    | leaf1::ECX_TSC_DEADLINE);
                e.ecx |= leaf1::ECX_HYPERVISOR;
                if host.tsc_deadline {
                    e.ecx |= leaf1::ECX_TSC_DEADLINE;
                }
                e.edx &= !(leaf1::EDX_ACPI | leaf1::EDX_TM | leaf1::EDX_PBE | leaf1::EDX_HTT);
                if smp {
                    e.edx |= leaf1::EDX_HTT;
                }
            }
            // EAX[4:0] = 0: no more caches; such subleaves stay as they are.
            0x4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax &= 0x0000_3fff;
                e.eax |= ((count - 1) & 0x3f) << 26;
                e.eax |= (sharing & 0xfff) << 14;
            }
            0x6 => {
                e.eax &= LEAF6_EAX_ARAT;
                (e.ebx, e.ecx, e.edx) = (0, 0, 0);
            }
            0xa => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            0xb | 0x1f => {
                (e.eax, e.ebx, e.ecx) = match e.index {
                    0 => (0, 1, LEVEL_TYPE_SMT << 8),
                    1 => (bits_for(vcpu.count), count, 1 | (LEVEL_TYPE_CORE << 8)),
                    // An invalid level ends the enumeration.
                    n => (0, 0, n & 0xff),
                };
                e.edx = apic_id;
            }
            0x8000_0001 => e.ecx &= !(EXT1_ECX_SVM | EXT1_ECX_TOPOEXT),
            0x8000_0008 if amd => {
                // ECX[7:0] = cores - 1, ECX[15:12] = APIC ID bits for the core number.
                e.ecx &= !0xf0ff;
                e.ecx |= (count - 1) & 0xff;
                e.ecx |= bits_for(vcpu.count) << 12;
            }
            _ => {}
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor(v: &[u8; 12]) -> kvm_cpuid_entry2 {
        let r = |o: usize| u32::from_le_bytes(v[o..o + 4].try_into().unwrap());
        leaf(0, 0, [0x1f, r(0), r(8), r(4)])
    }

    /// A small Intel-like set, as KVM reports it.
    fn intel() -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor(b"GenuineIntel"),
            // leaf 1: CLFLUSH size 8 in EBX[15:8]; ECX with MONITOR, VMX, x2APIC; EDX with FPU.
            leaf(
                1,
                0,
                [
                    0x000a_06a4,
                    0xff00_0800,
                    (1 << 3) | (1 << 5) | (1 << 21),
                    1 | (1 << 22),
                ],
            ),
            leaf(4, 0, [0x121 | (7 << 26), 0, 0, 0]), // L1 data
            leaf(4, 1, [0x143, 0, 0, 0]),             // L2 unified
            leaf(4, 2, [0x163 | (0xfff << 14), 0, 0, 0]), // L3 unified
            leaf(4, 3, [0, 0, 0, 0]),                 // end
            leaf(5, 0, [64, 64, 3, 0]),
            leaf(6, 0, [0x77, 2, 9, 0]),
            leaf(0xa, 0, [0x0704_3004, 0, 0, 0x603]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 16, 0x201, 7]),
            leaf(0xb, 2, [0, 0, 2, 7]),
            leaf(0x12, 0, [1, 0, 0, 0]),
            leaf(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            leaf(0x8000_0001, 0, [0, 0, 1 | (1 << 2), 0]),
            leaf(0x8000_0008, 0, [0x3030, 0, 0, 0]),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    fn topo(index: u8, count: u8) -> VcpuTopology {
        VcpuTopology { index, count }
    }

    #[test]
    fn leaf_1_has_the_apic_id_hypervisor_bit_and_no_host_only_features() {
        let out = filter_cpuid(&intel(), topo(3, 4), CpuidHost { tsc_deadline: true });
        let l1 = find(&out, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical CPUs");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor");
        assert_ne!(l1.ecx & (1 << 24), 0, "TSC deadline");
        assert_ne!(l1.ecx & (1 << 21), 0, "x2APIC kept");
        assert_eq!(l1.ecx & ((1 << 3) | (1 << 5)), 0, "MONITOR, VMX");
        assert_ne!(l1.edx & (1 << 28), 0, "HTT with several CPUs");
        assert_eq!(l1.edx & (1 << 22), 0, "ACPI thermal");
        assert_eq!(l1.edx & 1, 1, "FPU kept");
        assert_eq!(l1.eax, 0x000a_06a4, "signature kept");

        let up = find(
            &filter_cpuid(&intel(), topo(0, 1), CpuidHost::default()),
            1,
            0,
        );
        assert_eq!((up.ebx >> 16) & 0xffff, 0, "no logical count, APIC ID 0");
        assert_eq!(up.edx & (1 << 28), 0, "no HTT on one CPU");
        assert_eq!(up.ecx & (1 << 24), 0, "no TSC deadline without KVM's");
    }

    #[test]
    fn each_vcpu_gets_its_own_apic_ids() {
        for i in 0..4 {
            let out = filter_cpuid(&intel(), topo(i, 4), CpuidHost::default());
            assert_eq!(find(&out, 1, 0).ebx >> 24, u32::from(i));
            for sub in 0..3 {
                assert_eq!(find(&out, 0xb, sub).edx, u32::from(i));
            }
        }
    }

    #[test]
    fn leaf_0xb_describes_one_package_of_single_thread_cores() {
        let out = filter_cpuid(&intel(), topo(1, 3), CpuidHost::default());
        let (smt, core, end) = (find(&out, 0xb, 0), find(&out, 0xb, 1), find(&out, 0xb, 2));
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 3, 0x201));
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
    }

    #[test]
    fn leaf_4_shares_only_the_last_level_cache() {
        let out = filter_cpuid(&intel(), topo(0, 2), CpuidHost::default());
        let cores = |e: kvm_cpuid_entry2| (e.eax >> 26) + 1;
        let sharing = |e: kvm_cpuid_entry2| ((e.eax >> 14) & 0xfff) + 1;
        let (l1, l2, l3) = (find(&out, 4, 0), find(&out, 4, 1), find(&out, 4, 2));
        assert_eq!((cores(l1), sharing(l1)), (2, 1));
        assert_eq!((cores(l2), sharing(l2)), (2, 1));
        assert_eq!((cores(l3), sharing(l3)), (2, 2));
        assert_eq!(l1.eax & 0x3fff, 0x121, "cache type and level kept");
        assert_eq!(
            find(&out, 4, 3).eax,
            0,
            "the terminating subleaf stays empty"
        );
    }

    #[test]
    fn power_pmu_and_unsafe_leaves_are_cleared_or_dropped() {
        let out = filter_cpuid(&intel(), topo(0, 1), CpuidHost::default());
        let l6 = find(&out, 6, 0);
        assert_eq!((l6.eax, l6.ebx, l6.ecx, l6.edx), (0x4, 0, 0, 0));
        let la = find(&out, 0xa, 0);
        assert_eq!((la.eax, la.ebx, la.ecx, la.edx), (0, 0, 0, 0));
        for dropped in [5, 0x12] {
            assert!(out.iter().all(|e| e.function != dropped), "{dropped:#x}");
        }
        assert_eq!(find(&out, 0x8000_0001, 0).ecx, 1, "SVM cleared, LAHF kept");
        // KVM's own leaves pass untouched.
        assert_eq!(find(&out, 0x4000_0000, 0), find(&intel(), 0x4000_0000, 0));
        // Intel's 0x8000_0008 is not AMD's core count.
        assert_eq!(find(&out, 0x8000_0008, 0).ecx, 0);
    }

    #[test]
    fn amd_gets_its_core_count_in_0x8000_0008() {
        let mut set = intel();
        set[0] = vendor(b"AuthenticAMD");
        set.push(leaf(0x8000_0001, 0, [0, 0, (1 << 22) | (1 << 2) | 1, 0]));
        assert!(is_amd(&set));
        assert!(!is_amd(&intel()));
        let out = filter_cpuid(&set, topo(0, 4), CpuidHost::default());
        let e = find(&out, 0x8000_0008, 0);
        assert_eq!((e.ecx & 0xff, (e.ecx >> 12) & 0xf), (3, 2));
        assert!(
            out.iter()
                .filter(|e| e.function == 0x8000_0001)
                .all(|e| e.ecx & ((1 << 22) | (1 << 2)) == 0),
            "TOPOEXT and SVM cleared"
        );
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(bits_for), [0, 1, 2, 2, 3, 3, 4]);
    }
}
