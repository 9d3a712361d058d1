//! virtio-rng's request queue on fuzzed descriptor tables, rings and buffers, fed from
//! /dev/zero or from a short source that runs out (end of file mid-request).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peapod_fuzz::devices;
use peapod_fuzz::driver::{Driver, GuestOp};

#[derive(Arbitrary, Debug)]
struct Input {
    source: Option<Vec<u8>>,
    queue_size: u8,
    features: u64,
    ops: Vec<GuestOp>,
}

fuzz_target!(|input: Input| {
    peapod_fuzz::init();
    let device = devices::rng(input.source.as_deref());
    let mut driver = Driver::new(Box::new(device), &[input.queue_size], input.features);
    driver.bring_up();
    for op in input.ops.iter().take(64) {
        driver.apply(op);
    }
});
