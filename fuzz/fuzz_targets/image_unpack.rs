//! Image layer unpacking on fuzzed tar bytes: two layers (the input split at a fuzzed point,
//! so whiteouts meet a lower layer) through `Unpacker::apply_layer` into a fresh directory,
//! under a 1 MiB byte budget and 1000 entries, then `finish`. Nothing may panic, nothing may
//! be written outside the directory, and the budget holds. Runs as `nobody` (see
//! `peapod_fuzz::drop_root`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peapod::image::unpack::{UnpackLimits, UnpackOptions, Unpacker};

const MAX_BYTES: u64 = 1 << 20;

/// Bytes under `dir`, symlinks not followed.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

fuzz_target!(|data: &[u8]| {
    peapod_fuzz::drop_root();
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (usize::from(split) * 512).min(rest.len());
    let (lower, upper) = rest.split_at(at);
    let dir = peapod_fuzz::scratch_dir();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("rootfs dir");
    let opts = UnpackOptions {
        limits: UnpackLimits {
            max_bytes: MAX_BYTES,
            max_entries: 1000,
        },
        chown: false,
        devices: false,
    };
    let mut unpacker = Unpacker::new(&root, opts);
    for (layer, mut bytes) in [("lower", lower), ("upper", upper)] {
        if let Err(e) = unpacker.apply_layer(&mut bytes, layer) {
            let _ = e.to_string();
            break;
        }
    }
    if let Err(e) = unpacker.finish() {
        let _ = e.to_string();
    }
    // Make everything readable again (an archive may leave 000 directories) before counting
    // and removing.
    peapod_fuzz::make_owner_writable(&root);
    let written = disk_bytes(&root);
    assert!(
        written <= MAX_BYTES,
        "{written} bytes written under a {MAX_BYTES}-byte budget"
    );
});
