//! virtio-blk (virtio 1.2 §5.2) on a raw disk image file, read-only or read-write.
//!
//! A request is a 16-byte header (type, reserved, sector) in device-readable buffers, then
//! data (device-readable for writes, device-writable for reads and GET_ID), then one status
//! byte: the last device-writable byte of the chain. The driver may split these across
//! descriptors any way it likes. Served: IN, OUT, FLUSH (fdatasync), GET_ID (the serial);
//! anything else gets VIRTIO_BLK_S_UNSUPP.
//!
//! Every request is checked before any byte moves: the chain (see [`super::queue`]), that
//! data lengths are whole sectors, and that `[sector * 512, + len)` lies inside the image as it
//! was when the device was created, so the device never reads or writes past its end. A bad
//! request gets VIRTIO_BLK_S_IOERR, or used length 0 if it has no status byte to write.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;

use super::device::{Activation, DeviceError, VirtioDevice, read_config_bytes};
use super::interrupt::Interrupt;
use super::queue::{BufCursor, Chain, ChainError, check_chain, serve_queue};
use crate::vmm::memory::GuestMemory;

const NAME: &str = "virtio-blk";
/// Bytes per sector in every virtio-blk address and length.
pub const SECTOR_SIZE: u64 = 512;
/// Descriptors per request queue.
pub const QUEUE_SIZE: u16 = 256;
const HEADER_LEN: usize = 16;
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The configuration space up to `seg_max` (what Linux reads without further features).
const CONFIG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path} ({mode}): {source}; check the path and its permissions")]
    Open {
        path: PathBuf,
        mode: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // What follows fails one request, never the device.
    #[error("bad request chain: {0}")]
    Chain(#[from] ChainError),
    #[error("request header is {0} bytes; it must be {HEADER_LEN}")]
    ShortHeader(u64),
    #[error("request data length {0} is not a whole number of {SECTOR_SIZE}-byte sectors")]
    PartialSector(u64),
    #[error("request for {len} bytes at sector {sector} runs past the end of the {size}-byte disk")]
    OutOfRange { sector: u64, len: u64, size: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("disk image I/O failed: {0}")]
    Io(#[source] std::io::Error),
}

/// The image and what the guest may do with it.
#[derive(Debug)]
struct Disk {
    file: File,
    label: String,
    read_only: bool,
    /// Bytes the guest may address: the image size rounded down to whole sectors.
    size: u64,
    id: [u8; ID_LEN],
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: std::sync::Arc<Interrupt>,
}

/// A virtio-blk device backed by a raw image file.
pub struct Block {
    disk: Disk,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    /// Opens the raw image at `path`. `serial` is what the guest reads with GET_ID (truncated
    /// to 20 bytes; Linux shows it in `/sys/block/vdX/serial`).
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                mode: if read_only { "read-only" } else { "read-write" },
                source,
            })?;
        Self::from_file(file, path, read_only, serial)
    }

    /// Like [`Block::open`] with an already open image (`path` only names it in messages).
    pub fn from_file(
        mut file: File,
        path: &Path,
        read_only: bool,
        serial: &str,
    ) -> Result<Self, BlockError> {
        // Seeking to the end also works for block devices, whose metadata length is 0.
        let bytes = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        let size = bytes - bytes % SECTOR_SIZE;
        let mut id = [0u8; ID_LEN];
        let serial = serial.as_bytes();
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial[..n]);

        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        // size_max (8..12) stays 0: not offered. seg_max: data descriptors per request, leaving
        // room for the header and status descriptors.
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        Ok(Block {
            disk: Disk {
                file,
                label: path.display().to_string(),
                read_only,
                size,
                id,
            },
            config,
            active: None,
        })
    }

    /// The disk size the guest sees, in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size / SECTOR_SIZE
    }

    pub fn is_read_only(&self) -> bool {
        self.disk.read_only
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.disk.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!("{NAME}: ignored guest write to read-only config at {offset:#x}");
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
        let disk = &mut self.disk;
        let mem = &active.mem;
        serve_queue(&mut active.queue, mem, &active.interrupt, |chain| {
            disk.serve(mem, chain)
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

impl Disk {
    /// Serves one request; returns the bytes written into the chain (the used length).
    fn serve(&mut self, mem: &GuestMemory, chain: Chain<'_>) -> u32 {
        let chain = match check_chain(mem, chain) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("{NAME} {}: request failed: {e}", self.label);
                return 0;
            }
        };
        let mut readable = BufCursor::new(mem, chain.readable);
        let mut writable = BufCursor::new(mem, chain.writable);
        let Some(mut status) = writable.split_last_byte() else {
            tracing::debug!(
                "{NAME} {}: request failed: no device-writable status byte",
                self.label
            );
            return 0;
        };
        let (code, written) = match self.execute(&mut readable, &mut writable) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(BlockError::Unsupported(kind)) => {
                tracing::debug!("{NAME} {}: unsupported request type {kind}", self.label);
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            Err(e) => {
                tracing::debug!("{NAME} {}: request failed: {e}", self.label);
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        if let Err(e) = status.write_from_slice(&[code as u8]) {
            tracing::debug!("{NAME} {}: cannot write request status: {e}", self.label);
            return 0;
        }
        // The chain's total length fits in u32, and `written` excludes the status byte.
        u32::try_from(written).map_or(0, |w| w + 1)
    }

    /// Runs a request; returns how many data bytes it wrote into guest memory.
    fn execute(
        &mut self,
        readable: &mut BufCursor<'_>,
        writable: &mut BufCursor<'_>,
    ) -> Result<u64, BlockError> {
        let mut header = [0u8; HEADER_LEN];
        if readable.remaining() < HEADER_LEN as u64 {
            return Err(BlockError::ShortHeader(readable.remaining()));
        }
        readable.read_to_slice(&mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = writable.remaining();
                self.seek_checked(sector, len)?;
                writable.fill_from(&mut self.file, len)?;
                Ok(len)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(BlockError::ReadOnly);
                }
                let len = readable.remaining();
                self.seek_checked(sector, len)?;
                readable.drain_to(&mut self.file, len)?;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data().map_err(BlockError::Io)?;
                }
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = writable.remaining().min(ID_LEN as u64) as usize;
                writable.write_from_slice(&self.id[..n])?;
                Ok(n as u64)
            }
            other => Err(BlockError::Unsupported(other)),
        }
    }

    /// Checks that `len` bytes at `sector` are whole sectors inside the disk, and seeks there.
    fn seek_checked(&mut self, sector: u64, len: u64) -> Result<(), BlockError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::PartialSector(len));
        }
        let end = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| Some((start, start.checked_add(len)?)));
        let start = match end {
            Some((start, end)) if end <= self.size => start,
            _ => {
                return Err(BlockError::OutOfRange {
                    sector,
                    len,
                    size: self.size,
                });
            }
        };
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(BlockError::Io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::vmm::virtio::interrupt::CountingLine;
    use crate::vmm::virtio::testing::*;

    const DISK_SECTORS: u64 = 16;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const SERIAL: &str = "peapod-serial-number-too-long";

    /// Byte `i` of the test image.
    fn pattern(i: u64) -> u8 {
        (i / SECTOR_SIZE) as u8 ^ (i as u8).wrapping_mul(7)
    }

    struct Harness {
        mem: GuestMemory,
        q: DriverQueue,
        dev: Block,
        line: CountingLine,
        image: tempfile::NamedTempFile,
    }

    fn harness(read_only: bool) -> Harness {
        let mut image = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE).map(pattern).collect();
        image.write_all(&bytes).unwrap();
        // A partial sector at the end is not addressable.
        image.write_all(&[0xee; 100]).unwrap();
        let mut dev = Block::open(image.path(), read_only, SERIAL).unwrap();
        let mem = guest_memory();
        let q = DriverQueue::new(&mem, 0, 16);
        let line = CountingLine::new();
        dev.activate(Activation {
            mem: mem.clone(),
            queues: vec![Some(q.queue())],
            interrupt: Interrupt::new(line.clone()),
            features: 0,
        })
        .unwrap();
        Harness {
            mem,
            q,
            dev,
            line,
            image,
        }
    }

    impl Harness {
        fn header(&self, at: u64, kind: u32, sector: u64) {
            self.mem.write_obj(kind, GuestAddress(at)).unwrap();
            self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
            self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
        }

        /// Publishes a chain, serves the queue and returns (used length, status byte).
        fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
            let head = self.q.add_chain(bufs);
            self.submit_head(head)
        }

        fn submit_head(&mut self, head: u16) -> (u32, u8) {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            self.q.publish(head);
            let before = self.q.used_idx();
            self.dev.process_queue(0).unwrap();
            assert_eq!(self.q.used_idx(), before.wrapping_add(1), "one chain used");
            let (id, len) = self.q.used_elem(before);
            assert_eq!(id, u32::from(head));
            (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
        }

        /// A plain request: header, optional data, status.
        fn request(
            &mut self,
            kind: u32,
            sector: u64,
            data_len: u32,
            device_writes: bool,
        ) -> (u32, u8) {
            self.header(HDR, kind, sector);
            let mut bufs = vec![(HDR, 16, false)];
            if data_len > 0 {
                bufs.push((DATA, data_len, device_writes));
            }
            bufs.push((STATUS, 1, true));
            self.submit(&bufs)
        }

        fn guest_bytes(&self, at: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
            v
        }

        fn file_bytes(&self) -> Vec<u8> {
            std::fs::read(self.image.path()).unwrap()
        }
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    #[test]
    fn config_and_features_describe_the_disk() {
        let h = harness(true);
        assert_eq!(h.dev.capacity(), DISK_SECTORS);
        let mut cap = [0u8; 8];
        h.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        assert_ne!(h.dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(h.dev.features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
        let rw = harness(false);
        assert_eq!(rw.dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw.dev.features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    }

    #[test]
    fn reads_a_known_pattern() {
        let mut h = harness(true);
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 3, 1024, true), (1025, OK));
        let want: Vec<u8> = (3 * 512..5 * 512).map(pattern).collect();
        assert_eq!(h.guest_bytes(DATA, 1024), want);
        assert_eq!(h.line.count(), 1);
        // The last whole sector is readable.
        assert_eq!(
            h.request(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 512, true),
            (513, OK)
        );
    }

    #[test]
    fn fields_may_be_split_across_descriptors() {
        let mut h = harness(true);
        h.header(HDR, VIRTIO_BLK_T_IN, 2);
        // Header in two pieces, data in three (one empty), status shares the last data buffer.
        let bufs = [
            (HDR, 5, false),
            (HDR + 5, 11, false),
            (DATA, 200, true),
            (DATA + 0x1000, 0, true),
            (DATA + 0x2000, 312, true),
            (STATUS, 1, true),
        ];
        assert_eq!(h.submit(&bufs), (513, OK));
        let mut got = h.guest_bytes(DATA, 200);
        got.extend(h.guest_bytes(DATA + 0x2000, 312));
        let want: Vec<u8> = (2 * 512..3 * 512).map(pattern).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn writes_reach_the_file_and_read_back() {
        let mut h = harness(false);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 1) as u8).collect();
        h.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        assert_eq!(h.request(VIRTIO_BLK_T_OUT, 5, 1024, false), (1, OK));
        let file = h.file_bytes();
        assert_eq!(&file[5 * 512..7 * 512], &data[..]);
        assert_eq!(
            file[5 * 512 - 1],
            pattern(5 * 512 - 1),
            "neighbours untouched"
        );
        assert_eq!(file[7 * 512], pattern(7 * 512));
        assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, 0, false), (1, OK));
        h.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 5, 1024, true), (1025, OK));
        assert_eq!(h.guest_bytes(DATA, 1024), data);
    }

    #[test]
    fn get_id_returns_the_serial() {
        let mut h = harness(true);
        assert_eq!(h.request(VIRTIO_BLK_T_GET_ID, 0, 20, true), (21, OK));
        assert_eq!(h.guest_bytes(DATA, 20), SERIAL.as_bytes()[..20].to_vec());
        // A shorter buffer gets what fits.
        h.mem.write_slice(&[0u8; 20], GuestAddress(DATA)).unwrap();
        assert_eq!(h.request(VIRTIO_BLK_T_GET_ID, 0, 6, true), (7, OK));
        assert_eq!(h.guest_bytes(DATA, 8), b"peapod\0\0".to_vec());
    }

    #[test]
    fn unsupported_requests_say_so() {
        let mut h = harness(false);
        let unsupp = VIRTIO_BLK_S_UNSUPP as u8;
        for kind in [2, 11, 13, 0xdead_beef] {
            assert_eq!(h.request(kind, 0, 0, false), (1, unsupp), "type {kind}");
        }
    }

    #[test]
    fn out_of_range_and_partial_sectors_fail() {
        let mut h = harness(false);
        let before = h.file_bytes();
        for (sector, len) in [
            (DISK_SECTORS, 512),
            (DISK_SECTORS - 1, 1024),
            (u64::MAX, 512),
            (u64::MAX / 512, 512),
            (0, 100),
        ] {
            assert_eq!(h.request(VIRTIO_BLK_T_IN, sector, len, true), (1, IOERR));
            assert_eq!(h.request(VIRTIO_BLK_T_OUT, sector, len, false), (1, IOERR));
        }
        assert_eq!(h.file_bytes(), before, "nothing written past the end");
    }

    #[test]
    fn writes_to_a_read_only_disk_fail() {
        let mut h = harness(true);
        let before = h.file_bytes();
        h.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(h.request(VIRTIO_BLK_T_OUT, 0, 512, false), (1, IOERR));
        assert_eq!(h.file_bytes(), before);
        // Flushing a read-only disk is harmless.
        assert_eq!(h.request(VIRTIO_BLK_T_FLUSH, 0, 0, false), (1, OK));
    }

    #[test]
    fn malformed_chains_fail_alone() {
        let mut h = harness(false);
        h.header(HDR, VIRTIO_BLK_T_IN, 0);
        let fail = (0, 0xff); // used length 0, status byte untouched
        // Data buffer that leaves guest memory, or starts past it.
        assert_eq!(
            h.submit(&[
                (HDR, 16, false),
                (MEM_SIZE - 256, 512, true),
                (STATUS, 1, true)
            ]),
            fail
        );
        assert_eq!(
            h.submit(&[
                (HDR, 16, false),
                (u64::MAX - 100, 512, true),
                (STATUS, 1, true)
            ]),
            fail
        );
        // Header outside memory.
        assert_eq!(h.submit(&[(MEM_SIZE, 16, false), (STATUS, 1, true)]), fail);
        // Status descriptor device-readable: no status byte.
        assert_eq!(h.submit(&[(HDR, 16, false), (STATUS, 1, false)]), fail);
        // Device-readable after device-writable.
        assert_eq!(
            h.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)]),
            fail
        );
        // Status descriptor of length 0: no status byte anywhere.
        assert_eq!(h.submit(&[(HDR, 16, false), (STATUS, 0, true)]), fail);
        // Header too short: an I/O error in the status byte.
        assert_eq!(h.submit(&[(HDR, 8, false), (STATUS, 1, true)]), (1, IOERR));
        assert_eq!(h.submit(&[(STATUS, 1, true)]), (1, IOERR));

        // A chain that loops: 10 -> 11 -> 10.
        h.q.write_desc(10, HDR, 16, F_NEXT, 11);
        h.q.write_desc(11, STATUS, 1, F_WRITE | F_NEXT, 10);
        assert_eq!(h.submit_head(10), fail);
        // A chain naming a descriptor past the table.
        h.q.write_desc(12, HDR, 16, F_NEXT, 200);
        assert_eq!(h.submit_head(12), fail);
        // A descriptor pointing to itself.
        h.q.write_desc(13, STATUS, 1, F_WRITE | F_NEXT, 13);
        assert_eq!(h.submit_head(13), fail);

        // The device still serves good requests.
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 1, 512, true), (513, OK));
    }

    #[test]
    fn a_longer_than_queue_chain_fails() {
        let mut h = harness(true);
        h.header(HDR, VIRTIO_BLK_T_IN, 0);
        // 17 descriptors in a 16-entry table cannot exist; make all 16 say "next" (the last
        // back to the first) so the chain never ends.
        for i in 0..16u16 {
            let flags = if i == 0 { F_NEXT } else { F_NEXT | F_WRITE };
            h.q.write_desc(
                i,
                if i == 0 { HDR } else { DATA },
                if i == 0 { 16 } else { 512 },
                flags,
                (i + 1) % 16,
            );
        }
        assert_eq!(h.submit_head(0), (0, 0xff));
    }

    #[test]
    fn one_interrupt_per_batch() {
        let mut h = harness(true);
        for i in 0..3u64 {
            let hdr = HDR + 0x100 * i;
            h.header(hdr, VIRTIO_BLK_T_IN, i);
            let head = h.q.add_chain(&[
                (hdr, 16, false),
                (DATA + 0x1000 * i, 512, true),
                (STATUS + i, 1, true),
            ]);
            h.q.publish(head);
        }
        h.dev.process_queue(0).unwrap();
        assert_eq!(h.q.used_idx(), 3);
        assert_eq!(h.line.count(), 1);
        for i in 0..3u64 {
            assert_eq!(h.q.used_elem(i as u16).1, 513);
            let want: Vec<u8> = (i * 512..(i + 1) * 512).map(pattern).collect();
            assert_eq!(h.guest_bytes(DATA + 0x1000 * i, 512), want);
        }
        // Nothing new: no interrupt.
        h.dev.process_queue(0).unwrap();
        assert_eq!(h.line.count(), 1);
    }

    #[test]
    fn a_corrupt_available_ring_breaks_the_device() {
        let mut h = harness(true);
        h.q.set_avail_idx(17); // more than a queue's worth outstanding
        assert!(h.dev.process_queue(0).is_err());

        let mut h = harness(true);
        h.q.publish(200); // head past the table
        let err = h.dev.process_queue(0).unwrap_err();
        assert!(err.to_string().contains("past the queue size"), "{err}");
    }

    #[test]
    fn reset_stops_serving_and_missing_queue_fails_activation() {
        let mut h = harness(true);
        h.dev.reset();
        h.header(HDR, VIRTIO_BLK_T_IN, 0);
        let head = h.q.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
        h.q.publish(head);
        h.dev.process_queue(0).unwrap();
        assert_eq!(h.q.used_idx(), 0);
        let err = h
            .dev
            .activate(Activation {
                mem: h.mem.clone(),
                queues: vec![None],
                interrupt: Interrupt::new(CountingLine::new()),
                features: 0,
            })
            .unwrap_err();
        assert!(matches!(err, DeviceError::QueueNotReady { index: 0, .. }));
    }

    #[test]
    fn opening_a_missing_image_names_it() {
        let err = Block::open(Path::new("/nonexistent/disk.img"), true, "x").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/disk.img") && msg.contains("read-only"),
            "{msg}"
        );
    }

    #[test]
    fn shared_interrupt_is_used() {
        // The interrupt handed over at activation is the one raised.
        let mut h = harness(true);
        let line = CountingLine::new();
        let irq: Arc<Interrupt> = Interrupt::new(line.clone());
        h.dev.reset();
        h.dev
            .activate(Activation {
                mem: h.mem.clone(),
                queues: vec![Some(h.q.queue())],
                interrupt: irq.clone(),
                features: 0,
            })
            .unwrap();
        assert_eq!(h.request(VIRTIO_BLK_T_IN, 0, 512, true), (513, OK));
        assert_eq!(line.count(), 1);
        assert_eq!(irq.status(), 1);
    }
}
