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
        match queue.needs_notification(mem) {
            Ok(false) => {}
            Ok(true) | Err(_) => interrupt.signal_used_buffer(),
        }
    }
    result.map(|()| used)
}
