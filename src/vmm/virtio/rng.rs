//! virtio-rng (virtio 1.2 §5.4): fills the guest's device-writable buffers with bytes from the
//! host's random source (`/dev/urandom`), read straight into guest memory.
//!
//! Each request gets at most [`MAX_BYTES_PER_REQUEST`] bytes however large its buffers are, so
//! a guest cannot make the device thread spend long on one request. A request with a
//! device-readable buffer, or any chain that fails [`check_chain`], gets nothing (used length
//! 0).

use std::fs::File;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;

use super::device::{Activation, DeviceError, VirtioDevice};
use super::interrupt::Interrupt;
use super::queue::{BufCursor, Chain, check_chain, serve_queue};
use crate::vmm::memory::GuestMemory;

const NAME: &str = "virtio-rng";
/// The host's random source.
pub const RANDOM_SOURCE: &str = "/dev/urandom";
/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot open the host random source {RANDOM_SOURCE}: {0}; is /dev mounted?")]
    Open(#[source] std::io::Error),
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio entropy device.
pub struct Rng {
    source: File,
    active: Option<Active>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Rng {
    /// An entropy device fed from [`RANDOM_SOURCE`].
    pub fn new() -> Result<Self, RngError> {
        File::open(RANDOM_SOURCE)
            .map(Self::with_source)
            .map_err(RngError::Open)
    }

    /// An entropy device fed from `source` (read sequentially; tests pass a known file).
    pub fn with_source(source: File) -> Self {
        Rng {
            source,
            active: None,
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!("{NAME}: ignored guest write to config offset {offset:#x}; it has none");
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), DeviceError> {
        let queue = activation.take_queue(NAME, 0)?;
        self.active = Some(Active {
            mem: activation.mem,
            queue,
            interrupt: activation.interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        let (Some(active), 0) = (self.active.as_mut(), index) else {
            return Ok(());
        };
        let source = &mut self.source;
        let mem = &active.mem;
        serve_queue(&mut active.queue, mem, &active.interrupt, |chain| {
            fill(source, mem, chain)
        })
        .map(|_| ())
        .map_err(|source| DeviceError::Queue {
            device: NAME,
            index,
            source,
        })
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

/// Fills one request's buffers; returns the bytes written.
fn fill(source: &mut File, mem: &GuestMemory, chain: Chain<'_>) -> u32 {
    let chain = match check_chain(mem, chain) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("{NAME}: request failed: {e}");
            return 0;
        }
    };
    if !chain.readable.is_empty() {
        tracing::debug!("{NAME}: request failed: it has device-readable buffers");
        return 0;
    }
    let mut out = BufCursor::new(mem, chain.writable);
    let len = out.remaining().min(u64::from(MAX_BYTES_PER_REQUEST));
    match out.fill_from(source, len) {
        // `len` is at most MAX_BYTES_PER_REQUEST.
        Ok(()) => len as u32,
        Err(e) => {
            tracing::warn!("{NAME}: reading {RANDOM_SOURCE} failed: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::vmm::virtio::interrupt::CountingLine;
    use crate::vmm::virtio::testing::*;

    const BUF: u64 = 0x1_0000;

    fn activate(dev: &mut Rng, mem: &GuestMemory, q: &DriverQueue) -> CountingLine {
        let line = CountingLine::new();
        dev.activate(Activation {
            mem: mem.clone(),
            queues: vec![Some(q.queue())],
            interrupt: Interrupt::new(line.clone()),
            features: 0,
        })
        .unwrap();
        line
    }

    /// A source whose byte `i` is `i % 251`.
    fn known_source() -> File {
        let mut f = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..(256 * 1024u32)).map(|i| (i % 251) as u8).collect();
        f.write_all(&bytes).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        f
    }

    #[test]
    fn fills_every_writable_buffer_from_the_source() {
        let mem = guest_memory();
        let mut q = DriverQueue::new(&mem, 0, 16);
        let mut dev = Rng::with_source(known_source());
        let line = activate(&mut dev, &mem, &q);
        let head = q.add_chain(&[(BUF, 100, true), (BUF + 0x1000, 50, true)]);
        q.publish(head);
        dev.process_queue(0).unwrap();
        assert_eq!(q.used_elem(0), (u32::from(head), 150));
        let mut got = vec![0u8; 100];
        mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        let mut tail = vec![0u8; 50];
        mem.read_slice(&mut tail, GuestAddress(BUF + 0x1000))
            .unwrap();
        got.extend(tail);
        let want: Vec<u8> = (0..150u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
        assert_eq!(line.count(), 1);
    }

    #[test]
    fn requests_are_bounded() {
        let mem = guest_memory();
        let mut q = DriverQueue::new(&mem, 0, 16);
        let mut dev = Rng::with_source(known_source());
        activate(&mut dev, &mem, &q);
        let head = q.add_chain(&[(BUF, 2 * MAX_BYTES_PER_REQUEST, true)]);
        q.publish(head);
        dev.process_queue(0).unwrap();
        assert_eq!(q.used_elem(0).1, MAX_BYTES_PER_REQUEST);
        let past: u8 = mem
            .read_obj(GuestAddress(BUF + u64::from(MAX_BYTES_PER_REQUEST)))
            .unwrap();
        assert_eq!(past, 0, "nothing written past the bound");
    }

    #[test]
    fn bad_requests_get_nothing() {
        let mem = guest_memory();
        let mut q = DriverQueue::new(&mem, 0, 16);
        let mut dev = Rng::with_source(known_source());
        let line = activate(&mut dev, &mem, &q);
        for bufs in [
            vec![(BUF, 16, false)],                  // device-readable
            vec![(BUF, 16, false), (BUF, 16, true)], // readable part
            vec![(MEM_SIZE - 8, 16, true)],          // runs out of memory
            vec![(u64::MAX - 4, 16, true)],          // address wraps
        ] {
            let head = q.add_chain(&bufs);
            q.publish(head);
        }
        dev.process_queue(0).unwrap();
        assert_eq!(q.used_idx(), 4);
        for i in 0..4 {
            assert_eq!(q.used_elem(i).1, 0, "request {i}");
        }
        assert_eq!(line.count(), 1);
        let untouched: u64 = mem.read_obj(GuestAddress(BUF)).unwrap();
        assert_eq!(untouched, 0);
    }

    #[test]
    fn the_host_source_gives_random_bytes() {
        let mem = guest_memory();
        let mut q = DriverQueue::new(&mem, 0, 16);
        let mut dev = Rng::new().unwrap();
        activate(&mut dev, &mem, &q);
        let head = q.add_chain(&[(BUF, 64, true)]);
        q.publish(head);
        dev.process_queue(0).unwrap();
        assert_eq!(q.used_elem(0).1, 64);
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_ne!(got, [0u8; 64]);
    }
}
