//! Image import (`peapod image import`) of a fuzzed archive: an OCI archive, a docker-save
//! archive or a rootfs tarball, as the probe decides, into a fresh store. Nothing may panic;
//! whatever is refused is refused with an error. Runs as `nobody` (see
//! `peapod_fuzz::drop_root`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peapod::image::import::{ImportOptions, import};
use peapod::image::reference::ImageName;
use peapod::image::store::Store;

fuzz_target!(|data: &[u8]| {
    peapod_fuzz::drop_root();
    let dir = peapod_fuzz::scratch_dir();
    let archive = dir.path().join("image.tar");
    std::fs::write(&archive, data).expect("write the archive");
    let store = Store::open(&dir.path().join("store")).expect("a store");
    let opts = ImportOptions {
        name: Some(ImageName::parse("fuzz:latest").expect("a name")),
        reference: None,
    };
    match import(&store, &archive, &opts) {
        Ok(report) => assert!(!report.digest.is_empty()),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
