//! A hostile guest for peapod's VMM (issue #12): run inside a test VM (the test initramfs's
//! `peapod.test=hostile` mode, rootfs/test-init.sh, after the guest's own virtio drivers were
//! unbound), it drives the virtio-mmio devices by hand through `/dev/mem` and programs them
//! with malformed state: descriptors outside guest RAM, looping chains, huge and zero
//! lengths, bad queue sizes, kicks before DRIVER_OK, writes to read-only registers, odd and
//! unaligned accesses, status regressions, resets mid-request, header-only vsock buffers,
//! floods of connection requests.
//!
//! Each case prints one line, `peapod-hostile: case NAME ok` or `... FAIL reason`. A case
//! checks what it can (a read-only register reads back unchanged, a broken queue sets
//! DEVICE_NEEDS_RESET, a bad request is returned used and not served); after every case the
//! device is reset, set up properly and must serve one good request, so a device the case
//! left wedged fails it. The last line is `peapod-hostile: done passed=N failed=M
//! skipped=K`; the exit status is 1 if any case failed.
//!
//! The host side (tests/e2e/kvm_tests.rs, `hostile_guest_cannot_hurt_the_vmm`) checks what
//! the guest cannot see: the VMM kept running, logged little, and a neighbour VM was fine.
//!
//! Devices are found on the kernel command line the VMM writes
//! (`virtio_mmio.device=4K@0xd0000000:5`). The blk cases expect a disk whose first bytes
//! are `PEAPOD`; the vsock cases use host port 5000, where the test listens, and port 1,
//! where nothing does.

mod cases;
mod hw;
mod virtio;

use std::process::ExitCode;

use hw::{Dma, Window};
use virtio::{Device, ID_BLOCK, ID_RNG, ID_VSOCK};

/// Pages of our own memory the devices are given (see `cases` for their layout).
const DMA_PAGES: usize = 32;

fn main() -> ExitCode {
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            println!("peapod-hostile: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<usize, String> {
    // Locked pages may still be migrated by compaction unless this is off; ours must stay
    // where the devices were told they are. (Fails harmlessly on kernels without it.)
    let _ = std::fs::write("/proc/sys/vm/compact_unevictable_allowed", "0");
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let mut devices = Vec::new();
    for base in mmio_bases(&cmdline) {
        let win = Window::map(base)?;
        let id = win.r32(virtio::DEVICE_ID);
        println!("peapod-hostile: device id {id} at {base:#x}");
        devices.push(Device { win, base, id });
    }
    let dma = Dma::new(DMA_PAGES)?;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in cases::CASES {
        let Some(dev) = devices.iter().find(|d| d.id == case.device) else {
            println!(
                "peapod-hostile: case {} skip no {} device",
                case.name,
                device_name(case.device)
            );
            skipped += 1;
            continue;
        };
        let mut result = (case.run)(dev, &dma);
        dev.reset();
        if result.is_ok() {
            // Whatever the case did, a reset and a proper setup must give a working device.
            result = cases::good_request(dev, &dma)
                .map_err(|e| format!("the device did not recover after a reset: {e}"));
            dev.reset();
        }
        match result {
            Ok(()) => {
                println!("peapod-hostile: case {} ok", case.name);
                passed += 1;
            }
            Err(e) => {
                println!("peapod-hostile: case {} FAIL {e}", case.name);
                failed += 1;
            }
        }
    }
    println!("peapod-hostile: done passed={passed} failed={failed} skipped={skipped}");
    Ok(failed)
}

/// The window bases in `virtio_mmio.device=SIZE@BASE:IRQ` parameters.
fn mmio_bases(cmdline: &str) -> Vec<u64> {
    cmdline
        .split_whitespace()
        .filter_map(|p| p.strip_prefix("virtio_mmio.device="))
        .filter_map(|v| v.split_once('@'))
        .filter_map(|(_, rest)| rest.split(':').next())
        .filter_map(|base| u64::from_str_radix(base.trim_start_matches("0x"), 16).ok())
        .collect()
}

fn device_name(id: u32) -> &'static str {
    match id {
        ID_BLOCK => "virtio-blk",
        ID_RNG => "virtio-rng",
        ID_VSOCK => "virtio-vsock",
        _ => "such",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn window_bases_come_from_the_command_line() {
        let cmdline = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 \
                       virtio_mmio.device=4K@0xd0001000:6 peapod.test=hostile";
        assert_eq!(super::mmio_bases(cmdline), [0xd000_0000, 0xd000_1000]);
    }
}
