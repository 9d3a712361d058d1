//! KVM's binary statistics of one vCPU (`KVM_GET_STATS_FD` on the vCPU fd, Linux 5.14+): how
//! many times this vCPU left the guest, counted by KVM itself (CPUID, MSR, halt and page-fault
//! exits KVM handles without the VMM included).
//!
//! The VMM opens the file when it creates the vCPU and reads it when the guest triple-faults:
//! a vCPU with a handful of exits died at the guest's first instructions, one with thousands
//! ran a kernel that crashed. The file's layout is KVM's: a header, `num_desc` descriptors
//! (16 bytes each, then a name of `name_size` bytes), and a data block of `u64`s; a descriptor's
//! `offset` is its values' place inside the data block. Every offset and size is checked before
//! use: nothing here panics on what the file holds.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;

/// The counters a fault report gives, by KVM's names. `irq_exits` and `signal_exits` are
/// exits the guest did not cause (a host interrupt or a signal to the vCPU thread arrived
/// while it ran): on a slow host they come at any time, even during a guest's first
/// instructions.
pub const COUNTERS: [&str; 7] = [
    "exits",
    "io_exits",
    "mmio_exits",
    "insn_emulation",
    "halt_exits",
    "irq_exits",
    "signal_exits",
];

const HEADER_LEN: usize = 24;
const DESC_FIXED_LEN: usize = 16;

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

#[derive(Debug, thiserror::Error)]
pub enum VcpuStatsError {
    #[error("KVM_GET_STATS_FD failed: {0} (the host kernel is older than 5.14)")]
    Open(#[source] std::io::Error),
    #[error("reading the vCPU's KVM statistics: {0}")]
    Read(#[source] std::io::Error),
    #[error("the vCPU's KVM statistics are malformed: {0}")]
    Malformed(&'static str),
}

/// One vCPU's statistics file. Only opened when the vCPU is made (the ioctl is outside the
/// vCPU's seccomp list); it is parsed when read, at a fault, off the start-up path.
#[derive(Debug)]
pub struct VcpuStats {
    file: File,
}

/// The values of [`COUNTERS`] at one moment, `None` where the kernel has no such counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts {
    pub values: [Option<u64>; COUNTERS.len()],
}

impl ExitCounts {
    pub fn get(&self, name: &str) -> Option<u64> {
        COUNTERS
            .iter()
            .position(|c| *c == name)
            .and_then(|i| self.values[i])
    }

    /// The exits the guest itself caused: every exit less those of host interrupts and
    /// signals (`None` without KVM's total).
    pub fn guest_caused(&self) -> Option<u64> {
        let host_caused = self
            .get("irq_exits")
            .unwrap_or(0)
            .saturating_add(self.get("signal_exits").unwrap_or(0));
        self.get("exits").map(|e| e.saturating_sub(host_caused))
    }
}

impl std::fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, value) in COUNTERS.iter().zip(self.values) {
            if let Some(v) = value {
                write!(f, "{}{name} {v}", if first { "" } else { ", " })?;
                first = false;
            }
        }
        Ok(())
    }
}

impl VcpuStats {
    /// Opens `vcpu`'s statistics; call before the VMM's seccomp filter is in place.
    pub fn open(vcpu: &VcpuFd) -> Result<Self, VcpuStatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; the vCPU fd
        // is valid for the call.
        let fd = unsafe { vmm_sys_util::ioctl::ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(VcpuStatsError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel just gave us this fd; nothing else owns it.
        Ok(Self::from_file(unsafe { File::from_raw_fd(fd) }))
    }

    /// Statistics in KVM's layout read from `file` (tests give a file of their own).
    pub fn from_file(file: File) -> Self {
        VcpuStats { file }
    }

    /// Reads the counters now: the header, the descriptors, then one `pread` per counter.
    pub fn read(&self) -> Result<ExitCounts, VcpuStatsError> {
        let mut head = vec![0u8; HEADER_LEN];
        self.file
            .read_exact_at(&mut head, 0)
            .map_err(VcpuStatsError::Read)?;
        let header = Header::parse(&head)?;
        let mut descs = vec![0u8; header.descriptors_len()?];
        self.file
            .read_exact_at(&mut descs, u64::from(header.desc_offset))
            .map_err(VcpuStatsError::Read)?;
        let offsets = counter_offsets(&header, &descs)?;
        let mut counts = ExitCounts::default();
        for (slot, offset) in counts.values.iter_mut().zip(offsets) {
            if let Some(at) = offset {
                let mut value = [0u8; 8];
                self.file
                    .read_exact_at(&mut value, at)
                    .map_err(VcpuStatsError::Read)?;
                *slot = Some(u64::from_ne_bytes(value));
            }
        }
        Ok(counts)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    name_size: u32,
    num_desc: u32,
    desc_offset: u32,
    data_offset: u32,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(raw.try_into().ok()?))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(raw.try_into().ok()?))
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Self, VcpuStatsError> {
        let field = |at| u32_at(bytes, at).ok_or(VcpuStatsError::Malformed("short header"));
        Ok(Header {
            name_size: field(4)?,
            num_desc: field(8)?,
            desc_offset: field(16)?,
            data_offset: field(20)?,
        })
    }

    fn descriptor_len(&self) -> Result<usize, VcpuStatsError> {
        DESC_FIXED_LEN
            .checked_add(self.name_size as usize)
            .ok_or(VcpuStatsError::Malformed("name size"))
    }

    /// The descriptor block's length; refuses sizes no kernel has (KVM has a few hundred
    /// counters with names under 64 bytes).
    fn descriptors_len(&self) -> Result<usize, VcpuStatsError> {
        if self.num_desc > 4096 || self.name_size > 4096 {
            return Err(VcpuStatsError::Malformed("descriptor count or name size"));
        }
        self.descriptor_len()?
            .checked_mul(self.num_desc as usize)
            .ok_or(VcpuStatsError::Malformed("descriptor block size"))
    }
}

/// Finds each of [`COUNTERS`] among the descriptors; a counter must be a single `u64`.
fn counter_offsets(
    header: &Header,
    descs: &[u8],
) -> Result<[Option<u64>; COUNTERS.len()], VcpuStatsError> {
    let mut offsets = [None; COUNTERS.len()];
    let stride = header.descriptor_len()?;
    for desc in descs.chunks_exact(stride) {
        let (Some(size), Some(offset)) = (u16_at(desc, 6), u32_at(desc, 8)) else {
            return Err(VcpuStatsError::Malformed("short descriptor"));
        };
        let name = &desc[DESC_FIXED_LEN..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        let Some(index) = COUNTERS.iter().position(|c| c.as_bytes() == name) else {
            continue;
        };
        if size != 1 {
            continue;
        }
        offsets[index] = Some(u64::from(header.data_offset) + u64::from(offset));
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME_SIZE: usize = 48;

    /// A stats file as KVM lays it out: header, id, descriptors, data.
    fn stats_file(counters: &[(&str, u16, u64)]) -> Vec<u8> {
        let desc_offset = HEADER_LEN + NAME_SIZE;
        let data_offset = desc_offset + counters.len() * (DESC_FIXED_LEN + NAME_SIZE);
        let mut out = Vec::new();
        for v in [
            0u32,
            NAME_SIZE as u32,
            counters.len() as u32,
            HEADER_LEN as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            out.extend(v.to_ne_bytes());
        }
        let mut id = b"kvm-1234/vcpu_0".to_vec();
        id.resize(NAME_SIZE, 0);
        out.extend(id);
        let mut data = Vec::new();
        for (name, size, value) in counters {
            out.extend(0u32.to_ne_bytes()); // flags: cumulative
            out.extend(0i16.to_ne_bytes()); // exponent
            out.extend(size.to_ne_bytes());
            out.extend((data.len() as u32).to_ne_bytes());
            out.extend(0u32.to_ne_bytes()); // bucket size
            let mut n = name.as_bytes().to_vec();
            n.resize(NAME_SIZE, 0);
            out.extend(n);
            for i in 0..u64::from(*size) {
                data.extend((value + i).to_ne_bytes());
            }
        }
        out.extend(data);
        out
    }

    fn read_from(bytes: &[u8]) -> Result<ExitCounts, VcpuStatsError> {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        VcpuStats::from_file(file).read()
    }

    #[test]
    fn counters_are_found_by_name_among_others() {
        let file = stats_file(&[
            ("halt_poll_success_ns", 1, 7),
            ("halt_wait_hist", 32, 100),
            ("exits", 1, 1712),
            ("io_exits", 1, 168),
            ("insn_emulation", 1, 1400),
        ]);
        let counts = read_from(&file).unwrap();
        assert_eq!(counts.get("exits"), Some(1712));
        assert_eq!(counts.get("io_exits"), Some(168));
        assert_eq!(counts.get("insn_emulation"), Some(1400));
        assert_eq!(counts.get("mmio_exits"), None);
        assert_eq!(
            counts.to_string(),
            "exits 1712, io_exits 168, insn_emulation 1400"
        );
    }

    #[test]
    fn a_counter_that_is_not_one_value_is_skipped() {
        let file = stats_file(&[("exits", 4, 1)]);
        assert_eq!(read_from(&file).unwrap().get("exits"), None);
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        assert!(Header::parse(&[0u8; 10]).is_err());
        let mut file = stats_file(&[("exits", 1, 3)]);
        file[8..12].copy_from_slice(&u32::MAX.to_ne_bytes()); // num_desc
        assert!(read_from(&file).is_err());
        let mut file = stats_file(&[("exits", 1, 3)]);
        file[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // name_size
        assert!(read_from(&file).is_err());
    }
}
