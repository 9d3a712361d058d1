//! Serving a split virtqueue: popping the chains the driver made available, checking every
//! descriptor in them, moving bytes between them and the host, and returning them on the used
//! ring.
//!
//! Nothing in a descriptor is trusted. [`check_chain`] turns a chain into lists of
//! device-readable and device-writable buffers only if the chain ends (no loop, no index past
//! the table, not longer than the queue), every buffer lies entirely in guest memory, and no
//! readable buffer follows a writable one. A chain that fails is one failed request; only a
//! corrupt ring ([`QueueError`]) stops the device.

use std::collections::VecDeque;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, WriteVolatile};

use super::interrupt::Interrupt;
use crate::vmm::memory::GuestMemory;

/// A chain as the device sees it: borrowed guest memory.
pub type Chain<'a> = DescriptorChain<&'a GuestMemory>;

/// A request the guest got wrong; it fails alone.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain starting at {head} names no readable descriptor")]
    Empty { head: u16 },
    #[error(
        "descriptor chain starting at {head} does not end: it loops, is longer than the queue, \
         names a descriptor past the table, or exceeds 4 GiB"
    )]
    Unterminated { head: u16 },
    #[error("descriptor buffer {addr:#x}+{len:#x} is not inside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the request needs {needed} more bytes but its buffers hold {available}")]
    TooShort { needed: u64, available: u64 },
    #[error("guest memory access at {addr:#x} failed: {source}")]
    Memory {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("moving {len} bytes at guest address {addr:#x} to or from the host ended early")]
    ShortTransfer { addr: u64, len: usize },
}

/// The queue itself is broken: the device cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot read the available ring: {0}")]
    AvailRing(#[source] virtio_queue::Error),
    #[error("the available ring names descriptor {head}, past the queue size {size}")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error("cannot update the used ring: {0}")]
    UsedRing(#[source] virtio_queue::Error),
}

/// One descriptor's buffer, already checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain whose every buffer has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedChain {
    pub head: u16,
    pub readable: Vec<Buf>,
    pub writable: Vec<Buf>,
}

/// Walks `chain` and checks it (see the module docs).
pub fn check_chain(mem: &GuestMemory, chain: Chain<'_>) -> Result<CheckedChain, ChainError> {
    let head = chain.head_index();
    let mut out = CheckedChain {
        head,
        readable: Vec::new(),
        writable: Vec::new(),
    };
    // The iterator stops by itself after one queue's worth of descriptors, at a descriptor
    // index past the table, at an unreadable descriptor or at 4 GiB in total; in each of those
    // cases the last descriptor it yielded still says "next".
    let mut last_has_next = None;
    for desc in chain {
        last_has_next = Some(desc.has_next());
        let buf = Buf {
            addr: desc.addr(),
            len: desc.len(),
        };
        if !GuestMemoryBackend::check_range(mem, buf.addr, buf.len as usize) {
            return Err(ChainError::OutsideMemory {
                addr: buf.addr.raw_value(),
                len: buf.len,
            });
        }
        if desc.is_write_only() {
            out.writable.push(buf);
        } else if out.writable.is_empty() {
            out.readable.push(buf);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
    }
    match last_has_next {
        None => Err(ChainError::Empty { head }),
        Some(true) => Err(ChainError::Unterminated { head }),
        Some(false) => Ok(out),
    }
}

/// The bytes of a list of checked buffers, consumed front to back as one stream (a driver may
/// split a request's fields across descriptors any way it likes).
pub struct BufCursor<'a> {
    mem: &'a GuestMemory,
    bufs: VecDeque<Buf>,
    remaining: u64,
}

impl<'a> BufCursor<'a> {
    pub fn new(mem: &'a GuestMemory, bufs: Vec<Buf>) -> Self {
        let remaining = bufs.iter().map(|b| u64::from(b.len)).sum();
        BufCursor {
            mem,
            bufs: bufs.into(),
            remaining,
        }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Takes the last byte off the end as a cursor of its own (a status byte), or `None` if
    /// there are no bytes.
    pub fn split_last_byte(&mut self) -> Option<BufCursor<'a>> {
        while self.bufs.back().is_some_and(|b| b.len == 0) {
            self.bufs.pop_back();
        }
        let last = self.bufs.back_mut()?;
        last.len -= 1;
        // Cannot overflow: the whole buffer was checked to lie in guest memory.
        let addr = last.addr.unchecked_add(u64::from(last.len));
        self.remaining -= 1;
        Some(BufCursor::new(self.mem, vec![Buf { addr, len: 1 }]))
    }

    /// Copies the next `out.len()` bytes out of guest memory.
    pub fn read_to_slice(&mut self, out: &mut [u8]) -> Result<(), ChainError> {
        let mem = self.mem;
        let mut done = 0;
        self.consume(out.len() as u64, |addr, len| {
            mem.read_slice(&mut out[done..done + len], addr)
                .map_err(|source| memory_error(addr, source))?;
            done += len;
            Ok(())
        })
    }

    /// Copies `data` into the next `data.len()` bytes of guest memory.
    pub fn write_from_slice(&mut self, data: &[u8]) -> Result<(), ChainError> {
        let mem = self.mem;
        let mut done = 0;
        self.consume(data.len() as u64, |addr, len| {
            mem.write_slice(&data[done..done + len], addr)
                .map_err(|source| memory_error(addr, source))?;
            done += len;
            Ok(())
        })
    }

    /// Reads `count` bytes from `src` (a file, at its current position) straight into the
    /// next `count` bytes of guest memory.
    pub fn fill_from<F: ReadVolatile>(
        &mut self,
        src: &mut F,
        count: u64,
    ) -> Result<(), ChainError> {
        let mem = self.mem;
        self.consume(count, |addr, len| {
            let mut done = 0;
            while done < len {
                let at = addr.unchecked_add(done as u64);
                let n = mem
                    .read_volatile_from(at, src, len - done)
                    .map_err(|source| memory_error(at, source))?;
                if n == 0 {
                    return Err(ChainError::ShortTransfer {
                        addr: at.raw_value(),
                        len: len - done,
                    });
                }
                done += n;
            }
            Ok(())
        })
    }

    /// Writes the next `count` bytes of guest memory to `dst` (a file, at its current
    /// position).
    pub fn drain_to<F: WriteVolatile>(
        &mut self,
        dst: &mut F,
        count: u64,
    ) -> Result<(), ChainError> {
        let mem = self.mem;
        self.consume(count, |addr, len| {
            let mut done = 0;
            while done < len {
                let at = addr.unchecked_add(done as u64);
                let n = mem
                    .write_volatile_to(at, dst, len - done)
                    .map_err(|source| memory_error(at, source))?;
                if n == 0 {
                    return Err(ChainError::ShortTransfer {
                        addr: at.raw_value(),
                        len: len - done,
                    });
                }
                done += n;
            }
            Ok(())
        })
    }

    /// Calls `f` on consecutive pieces (each within one buffer) covering the next `count`
    /// bytes. Fails without consuming anything if fewer than `count` bytes remain.
    fn consume(
        &mut self,
        count: u64,
        mut f: impl FnMut(GuestAddress, usize) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        if count > self.remaining {
            return Err(ChainError::TooShort {
                needed: count,
                available: self.remaining,
            });
        }
        let mut left = count;
        while left > 0 {
            let Some(front) = self.bufs.front_mut() else {
                break; // unreachable: `remaining` counts the bytes in `bufs`
            };
            let take = left.min(u64::from(front.len));
            let addr = front.addr;
            // `take` fits in u32 (it is at most `front.len`), so in usize too.
            f(addr, take as usize)?;
            front.len -= take as u32;
            front.addr = addr.unchecked_add(take);
            if front.len == 0 {
                self.bufs.pop_front();
            }
            left -= take;
            self.remaining -= take;
        }
        Ok(())
    }
}

fn memory_error(addr: GuestAddress, source: vm_memory::GuestMemoryError) -> ChainError {
    ChainError::Memory {
        addr: addr.raw_value(),
        source,
    }
}

/// Pops the next chain the driver made available on `queue`, or `None` if there is none.
/// Fails if the available ring names a descriptor past the table. A device that pops a chain
/// it then cannot use hands it back with `queue.go_to_previous_position()`.
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemory,
) -> Result<Option<Chain<'a>>, QueueError> {
    let size = queue.size();
    let Some(chain) = queue.iter(mem).map_err(QueueError::AvailRing)?.next() else {
        return Ok(None);
    };
    let head = chain.head_index();
    if head >= size {
        return Err(QueueError::HeadOutOfRange { head, size });
    }
    Ok(Some(chain))
}

/// Puts `head` on the used ring with `len` bytes written into it. Does not interrupt the
/// guest: call [`notify_used`] once after a batch.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue.add_used(mem, head, len).map_err(QueueError::UsedRing)
}

/// Interrupts the guest about used buffers, unless the driver asked not to be.
pub fn notify_used(queue: &mut Queue, mem: &GuestMemory, interrupt: &Interrupt) {
    match queue.needs_notification(mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => interrupt.signal_used_buffer(),
    }
}

/// Serves every chain the driver has made available on `queue` (at most one queue's worth, so
/// a guest that keeps adding cannot keep the device thread here): `serve` handles one chain
/// and returns how many bytes it wrote into it, which goes on the used ring. Raises the
/// interrupt once if anything was used and the driver wants to hear about it. Returns the
/// number of chains used.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &Interrupt,
    mut serve: impl FnMut(Chain<'_>) -> u32,
) -> Result<usize, QueueError> {
    let chains: Vec<Chain<'_>> = queue.iter(mem).map_err(QueueError::AvailRing)?.collect();
    let size = queue.size();
    let mut used = 0;
    let mut result = Ok(());
    for chain in chains {
        let head = chain.head_index();
        if head >= size {
            result = Err(QueueError::HeadOutOfRange { head, size });
            break;
        }
        let len = serve(chain);
        if let Err(e) = queue.add_used(mem, head, len) {
            result = Err(QueueError::UsedRing(e));
            break;
        }
        used += 1;
    }
    // Tell the driver about what was used even if the ring turned out broken part-way.
    if used > 0 {
        notify_used(queue, mem, interrupt);
    }
    result.map(|()| used)
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueOwnedT;

    use super::*;
    use crate::vmm::virtio::interrupt::CountingLine;
    use crate::vmm::virtio::testing::*;

    const F_INDIRECT: u16 = 4;

    /// Publishes `head` and checks the chain the device pops.
    fn check_head(
        q: &DriverQueue,
        mem: &GuestMemory,
        head: u16,
    ) -> Result<CheckedChain, ChainError> {
        let mut queue = q.queue();
        let published = queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .unwrap();
        queue.set_next_avail(published.0);
        q.publish(head);
        let chain = queue.iter(mem).unwrap().next().unwrap();
        check_chain(mem, chain)
    }

    fn buf(addr: u64, len: u32) -> Buf {
        Buf {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn a_good_chain_is_split_by_direction() {
        let mem = guest_memory();
        let mut q = DriverQueue::new(&mem, 0, 8);
        let head = q.add_chain(&[(0x1000, 16, false), (0x2000, 0, false), (0x3000, 8, true)]);
        let c = check_head(&q, &mem, head).unwrap();
        assert_eq!(c.readable, vec![buf(0x1000, 16), buf(0x2000, 0)]);
        assert_eq!(c.writable, vec![buf(0x3000, 8)]);
    }

    #[test]
    fn bad_chains_are_named() {
        let mem = guest_memory();
        let q = DriverQueue::new(&mem, 0, 8);
        // Buffer ending one byte past memory.
        q.write_desc(0, MEM_SIZE - 15, 16, 0, 0);
        assert!(matches!(
            check_head(&q, &mem, 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        // Loop.
        q.write_desc(1, 0x1000, 1, F_NEXT, 2);
        q.write_desc(2, 0x1000, 1, F_NEXT, 1);
        assert!(matches!(
            check_head(&q, &mem, 1),
            Err(ChainError::Unterminated { head: 1 })
        ));
        // Next past the table.
        q.write_desc(3, 0x1000, 1, F_NEXT, 8);
        assert!(matches!(
            check_head(&q, &mem, 3),
            Err(ChainError::Unterminated { .. })
        ));
        // Readable after writable.
        q.write_desc(4, 0x1000, 1, F_WRITE | F_NEXT, 5);
        q.write_desc(5, 0x1000, 1, 0, 0);
        assert!(matches!(
            check_head(&q, &mem, 4),
            Err(ChainError::ReadableAfterWritable)
        ));
        // An indirect table outside memory yields nothing.
        q.write_desc(6, MEM_SIZE, 32, F_INDIRECT, 0);
        assert!(matches!(
            check_head(&q, &mem, 6),
            Err(ChainError::Empty { head: 6 })
        ));
    }

    #[test]
    fn an_indirect_table_is_followed_and_checked() {
        let mem = guest_memory();
        let q = DriverQueue::new(&mem, 0, 8);
        let table = DriverQueue::new(&mem, 0x8000, 2); // its descriptor table is at 0x8000
        table.write_desc(0, 0x1000, 16, F_NEXT, 1);
        table.write_desc(1, 0x2000, 1, F_WRITE, 0);
        q.write_desc(0, 0x8000, 32, F_INDIRECT, 0);
        let c = check_head(&q, &mem, 0).unwrap();
        assert_eq!(c.readable, vec![buf(0x1000, 16)]);
        assert_eq!(c.writable, vec![buf(0x2000, 1)]);
    }

    #[test]
    fn a_cursor_streams_across_buffers() {
        let mem = guest_memory();
        mem.write_slice(&[1, 2, 3], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[4, 5], GuestAddress(0x2000)).unwrap();
        let mut c = BufCursor::new(&mem, vec![buf(0x1000, 3), buf(0x3000, 0), buf(0x2000, 2)]);
        assert_eq!(c.remaining(), 5);
        let mut out = [0u8; 4];
        c.read_to_slice(&mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        // Asking for more than is left fails and consumes nothing.
        assert!(matches!(
            c.read_to_slice(&mut out),
            Err(ChainError::TooShort {
                needed: 4,
                available: 1
            })
        ));
        assert_eq!(c.remaining(), 1);
        let mut last = [0u8; 1];
        c.read_to_slice(&mut last).unwrap();
        assert_eq!(last, [5]);
    }

    #[test]
    fn the_last_byte_splits_off_past_empty_buffers() {
        let mem = guest_memory();
        let mut c = BufCursor::new(&mem, vec![buf(0x1000, 4), buf(0x2000, 0), buf(0x3000, 0)]);
        let mut status = c.split_last_byte().unwrap();
        assert_eq!(c.remaining(), 3);
        status.write_from_slice(&[9]).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1003)).unwrap(), 9);
        let mut empty = BufCursor::new(&mem, vec![buf(0x1000, 0)]);
        assert!(empty.split_last_byte().is_none());
    }

    #[test]
    fn serving_uses_each_chain_and_interrupts_once() {
        let mem = guest_memory();
        let mut q = DriverQueue::new(&mem, 0, 8);
        let mut queue = q.queue();
        let line = CountingLine::new();
        let irq = Interrupt::new(line.clone());
        for _ in 0..3 {
            let head = q.add_chain(&[(0x1000, 4, true)]);
            q.publish(head);
        }
        let n = serve_queue(&mut queue, &mem, &irq, |_| 4).unwrap();
        assert_eq!((n, q.used_idx(), line.count()), (3, 3, 1));
        let n = serve_queue(&mut queue, &mem, &irq, |_| 4).unwrap();
        assert_eq!((n, line.count()), (0, 1));
    }

    #[test]
    fn hostile_descriptor_tables_never_panic() {
        use std::io::Write;

        use crate::vmm::virtio::VirtioDevice;
        use crate::vmm::virtio::block::Block;
        use crate::vmm::virtio::device::Activation;

        let mut image = tempfile::NamedTempFile::new().unwrap();
        image.write_all(&[0u8; 64 * 1024]).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _round in 0..200 {
            let mem = guest_memory();
            let q = DriverQueue::new(&mem, 0, 16);
            let mut dev = Block::open(image.path(), next() & 1 == 0, "fuzz").unwrap();
            dev.activate(Activation {
                mem: mem.clone(),
                queues: vec![Some(q.queue())],
                interrupt: Interrupt::new(CountingLine::new()),
                features: 0,
            })
            .unwrap();
            for i in 0..16 {
                let r = next();
                // Addresses mostly inside memory (some near its end), lengths mostly small.
                let addr = match r % 4 {
                    0 => next(),
                    1 => MEM_SIZE - (next() % 64),
                    _ => 0x1_0000 + next() % 0x8000,
                };
                let len = if r & 0x10 == 0 {
                    next() as u32
                } else {
                    (next() % 2048) as u32
                };
                let flags = (next() % 8) as u16;
                let nxt = (next() % 20) as u16;
                q.write_desc(i, addr, len, flags, nxt);
                // Some of the time, a request header the device will parse.
                if r & 0x20 == 0 {
                    let kind = [0u32, 1, 4, 8, 11][(next() % 5) as usize];
                    let hdr = 0x1_0000 + 0x100 * u64::from(i);
                    mem.write_obj(kind, GuestAddress(hdr)).unwrap();
                    mem.write_obj(next() % 200, GuestAddress(hdr + 8)).unwrap();
                }
            }
            for _ in 0..(next() % 20) {
                q.publish((next() % 18) as u16);
            }
            // Either the requests are served (each failing alone) or the ring is declared
            // broken; never a panic, never a hang.
            let _ = dev.process_queue(0);
        }
    }
}
