//! virtio-blk's request queue on fuzzed descriptor tables, rings and buffers: a hostile guest
//! driver writes anything into guest memory and kicks the queue, with resets in between. The
//! device must fail bad requests one by one, never panic or touch the image past its end.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peapod_fuzz::devices;
use peapod_fuzz::driver::{Driver, GuestOp};

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    queue_size: u8,
    features: u64,
    ops: Vec<GuestOp>,
}

fuzz_target!(|input: Input| {
    peapod_fuzz::init();
    let device = devices::block(input.read_only);
    let mut driver = Driver::new(Box::new(device), &[input.queue_size], input.features);
    driver.bring_up();
    for op in input.ops.iter().take(64) {
        driver.apply(op);
    }
});
