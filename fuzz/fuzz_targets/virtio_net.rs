//! virtio-net on fuzzed receive and transmit queues, with fuzzed frames from the host network
//! (the tap's side) toward the guest: every frame the host sends and every chain the guest
//! posts is hostile. Stands in a `SOCK_SEQPACKET` pair for the tap.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peapod_fuzz::devices::{self, NetHostOp};
use peapod_fuzz::driver::{Driver, GuestOp};

#[derive(Arbitrary, Debug)]
enum Op {
    Guest(GuestOp),
    Host(NetHostOp),
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_sizes: [u8; 2],
    features: u64,
    mtu: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    peapod_fuzz::init();
    let (device, mut peer) = devices::net([2, 0, 0, 0, 0, 1], input.mtu);
    let mut driver = Driver::new(Box::new(device), &input.queue_sizes, input.features);
    driver.bring_up();
    for op in input.ops.iter().take(64) {
        match op {
            Op::Guest(op) => driver.apply(op),
            Op::Host(op) => peer.apply(op),
        }
    }
});
