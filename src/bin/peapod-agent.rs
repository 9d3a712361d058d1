//! The guest agent (see `peapod::agent`): PID 1 of a pod VM's initramfs.

fn main() {
    std::process::exit(peapod::agent::main());
}
