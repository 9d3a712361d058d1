//! virtio-vsock on fuzzed rx, tx and event queues, with host processes that connect with
//! fuzzed handshake lines, send fuzzed bytes toward the guest, read, half-close and vanish,
//! and a host listener for the connections the guest opens. Neither side may panic the
//! device or hang the device thread (libFuzzer's -timeout reports a hang).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peapod_fuzz::devices::{self, VsockHostOp};
use peapod_fuzz::driver::{Driver, GuestOp};

#[derive(Arbitrary, Debug)]
enum Op {
    Guest(GuestOp),
    Host(VsockHostOp),
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_sizes: [u8; 3],
    features: u64,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    peapod_fuzz::init();
    let (device, mut peer) = devices::vsock();
    let mut driver = Driver::new(Box::new(device), &input.queue_sizes, input.features);
    driver.bring_up();
    for op in input.ops.iter().take(64) {
        match op {
            Op::Guest(op) => driver.apply(op),
            Op::Host(op) => peer.apply(op),
        }
    }
});
