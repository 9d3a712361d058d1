//! The device thread's side of a virtio-mmio device: an `event_manager` subscriber that waits
//! on the device's queue-notify eventfds and serves a queue each time the guest kicks it.
//!
//! One `EventManager` on one thread serves every device: the VMM adds one
//! [`MmioQueueHandler`] per device and calls `run()` in a loop. The eventfds are the ones KVM
//! signals on a guest write to QueueNotify (ioeventfd); tests write to them directly and run a
//! single iteration.
//!
//! A device that also waits on host descriptors of its own (vsock: a listening socket and one
//! socket per connection) provides a [`HostFdSource`], which the VMM adds to the same manager
//! wrapped in a [`HostFdHandler`].

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::device::HostFdSource;
use super::mmio::MmioTransport;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{device}: cannot duplicate the notify eventfd of queue {index}: {source}")]
    CloneEventFd {
        device: &'static str,
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: cannot duplicate host descriptor {index} to watch it: {source}")]
    CloneHostFd {
        device: &'static str,
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: a previous access panicked while holding the device; the VM has to be restarted")]
    Poisoned(&'static str),
}

/// Serves one virtio-mmio device's queues on the device thread.
#[derive(Debug)]
pub struct MmioQueueHandler {
    name: &'static str,
    transport: Arc<Mutex<MmioTransport>>,
    notify: Vec<EventFd>,
}

impl MmioQueueHandler {
    /// A handler for `transport`, which is the same object the MMIO bus holds.
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Result<Self, EventError> {
        let (name, notify) = {
            let t = transport
                .lock()
                .map_err(|_| EventError::Poisoned("virtio"))?;
            let name = t.name();
            let notify = t
                .notify_eventfds()
                .iter()
                .enumerate()
                .map(|(index, evt)| {
                    evt.try_clone().map_err(|source| EventError::CloneEventFd {
                        device: name,
                        index,
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (name, notify)
        };
        Ok(MmioQueueHandler {
            name,
            transport,
            notify,
        })
    }

    /// Serves queue `index` now, as if its eventfd had fired.
    pub fn serve(&self, index: usize) -> Result<(), EventError> {
        self.transport
            .lock()
            .map_err(|_| EventError::Poisoned(self.name))?
            .process_queue(index);
        Ok(())
    }
}

impl MutEventSubscriber for MmioQueueHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.notify.iter().enumerate() {
            // Queue counts are small (they come from the device model, not the guest).
            let event = Events::with_data(evt, index as u32, EventSet::IN);
            if let Err(e) = ops.add(event) {
                tracing::error!(
                    "{}: cannot watch queue {index}; the guest's requests on it will hang: {e}",
                    self.name
                );
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let index = events.data() as usize;
        let Some(evt) = self.notify.get(index) else {
            tracing::error!("{}: event for unknown queue {index}", self.name);
            let _ = ops.remove(events);
            return;
        };
        if !events.event_set().contains(EventSet::IN) {
            tracing::error!(
                "{}: queue {index} notify eventfd failed ({:?}); no longer watching it",
                self.name,
                events.event_set()
            );
            let _ = ops.remove(events);
            return;
        }
        // Consume the kick; several kicks since the last wakeup are served by one pass.
        // Nothing to read (EAGAIN) only means another pass already saw them.
        let _ = evt.read();
        if let Err(e) = self.serve(index) {
            tracing::error!("{e}; no longer serving queue {index}");
            let _ = ops.remove(events);
        }
    }
}

/// Watches a device's own host descriptors ([`HostFdSource::host_fds`]) on the device thread
/// and hands each readiness to the source.
pub struct HostFdHandler<S: HostFdSource> {
    source: S,
    /// Duplicates of the source's descriptors, so that what is registered with the event
    /// manager stays open for as long as it is registered.
    fds: Vec<OwnedFd>,
}

impl<S: HostFdSource> std::fmt::Debug for HostFdHandler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFdHandler")
            .field("device", &self.source.name())
            .field("fds", &self.fds)
            .finish()
    }
}

impl<S: HostFdSource> HostFdHandler<S> {
    pub fn new(source: S) -> Result<Self, EventError> {
        let name = source.name();
        let fds = source
            .host_fds()
            .iter()
            .enumerate()
            .map(|(index, fd)| {
                fd.try_clone_to_owned()
                    .map_err(|source| EventError::CloneHostFd {
                        device: name,
                        index,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostFdHandler { source, fds })
    }
}

impl<S: HostFdSource> MutEventSubscriber for HostFdHandler<S> {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, fd) in self.fds.iter().enumerate() {
            // Descriptor counts are small (they come from the device model, not the guest).
            let event = Events::with_data(fd, index as u32, EventSet::IN);
            if let Err(e) = ops.add(event) {
                tracing::error!(
                    "{}: cannot watch host descriptor {index}; its host I/O will hang: {e}",
                    self.source.name()
                );
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let index = events.data() as usize;
        let name = self.source.name();
        if index >= self.fds.len() {
            tracing::error!("{name}: event for unknown host descriptor {index}");
            let _ = ops.remove(events);
            return;
        }
        if !events.event_set().contains(EventSet::IN) {
            tracing::error!(
                "{name}: host descriptor {index} failed ({:?}); no longer watching it",
                events.event_set()
            );
            let _ = ops.remove(events);
            return;
        }
        if let Err(e) = self.source.process_host_event(index) {
            tracing::error!("{e}; no longer watching host descriptor {index}");
            let _ = ops.remove(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_mmio as reg;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::vmm::bus::Bus;
    use crate::vmm::virtio::VirtioDevice;
    use crate::vmm::virtio::block::Block;
    use crate::vmm::virtio::interrupt::{CountingLine, Interrupt};
    use crate::vmm::virtio::mmio::{MMIO_WINDOW_SIZE, MmioSlot};
    use crate::vmm::virtio::rng::Rng;
    use crate::vmm::virtio::testing::*;

    type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    const SLOT: MmioSlot = MmioSlot {
        base: 0xd000_0000,
        irq: 5,
    };

    struct Vm {
        mem: crate::vmm::memory::GuestMemory,
        bus: Bus,
        transport: Arc<Mutex<MmioTransport>>,
        line: CountingLine,
        manager: Manager,
    }

    /// What the VM builder does for one device, minus KVM.
    fn attach(device: Box<dyn VirtioDevice>) -> Vm {
        let mem = guest_memory();
        let line = CountingLine::new();
        let transport = MmioTransport::new(mem.clone(), device, Interrupt::new(line.clone()));
        let transport = Arc::new(Mutex::new(transport.unwrap()));
        let mut bus = Bus::new();
        bus.insert("virtio", SLOT.base, MMIO_WINDOW_SIZE, transport.clone())
            .unwrap();
        let mut manager = Manager::new().unwrap();
        let handler = MmioQueueHandler::new(transport.clone()).unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(handler)));
        Vm {
            mem,
            bus,
            transport,
            line,
            manager,
        }
    }

    impl Vm {
        fn read32(&self, offset: u32) -> u32 {
            let mut d = [0u8; 4];
            self.bus
                .read(SLOT.base + u64::from(offset), &mut d)
                .unwrap();
            u32::from_le_bytes(d)
        }

        fn write32(&self, offset: u32, value: u32) {
            self.bus
                .write(SLOT.base + u64::from(offset), &value.to_le_bytes())
                .unwrap();
        }

        fn kick(&self, queue: u32) {
            self.bus
                .write(SLOT.notify_address(), &queue.to_le_bytes())
                .unwrap();
        }
    }

    #[test]
    fn a_kick_is_served_in_one_loop_iteration() {
        let mut vm = attach(Box::new(Rng::new().unwrap()));
        let mut q = DriverQueue::new(&vm.mem, 0, 16);
        linux_bring_up(&mut *vm.transport.lock().unwrap(), &[&q]);
        assert_eq!(
            vm.manager.run_with_timeout(0).unwrap(),
            0,
            "nothing pending"
        );

        // Two requests and two kicks before the device thread wakes: one pass serves both,
        // with one interrupt.
        for i in 0..2 {
            let head = q.add_chain(&[(0x1_0000 + 0x100 * i, 32, true)]);
            q.publish(head);
            vm.kick(0);
        }
        assert_eq!(vm.manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(q.used_idx(), 2);
        assert_eq!(q.used_elem(0).1, 32);
        assert_eq!(q.used_elem(1).1, 32);
        assert_eq!(vm.line.count(), 1);

        // The guest's interrupt handler: read the status, acknowledge it.
        assert_eq!(vm.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        vm.write32(reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(vm.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        // The kicks were consumed.
        assert_eq!(vm.manager.run_with_timeout(0).unwrap(), 0);
    }

    #[test]
    fn kicks_before_driver_ok_are_dropped() {
        let mut vm = attach(Box::new(Rng::new().unwrap()));
        let mut q = DriverQueue::new(&vm.mem, 0, 16);
        let head = q.add_chain(&[(0x1_0000, 32, true)]);
        q.publish(head);
        vm.kick(0);
        assert_eq!(vm.manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(q.used_idx(), 0);
        assert_eq!(vm.line.count(), 0);
    }

    #[test]
    fn a_block_read_end_to_end() {
        let mut image = tempfile::NamedTempFile::new().unwrap();
        image.write_all(&[0xab; 4096]).unwrap();
        let dev = Block::open(image.path(), true, "e2e").unwrap();
        let mut vm = attach(Box::new(dev));
        assert_eq!(vm.read32(reg::VIRTIO_MMIO_DEVICE_ID), 2);
        // Capacity, read as Linux reads a 64-bit config field: two 32-bit halves.
        assert_eq!(vm.read32(reg::VIRTIO_MMIO_CONFIG), 8);
        assert_eq!(vm.read32(reg::VIRTIO_MMIO_CONFIG + 4), 0);

        let mut q = DriverQueue::new(&vm.mem, 0, 16);
        linux_bring_up(&mut *vm.transport.lock().unwrap(), &[&q]);
        let (hdr, data, status) = (0x1_0000, 0x2_0000, 0x3_0000);
        vm.mem.write_obj(0u32, GuestAddress(hdr)).unwrap(); // VIRTIO_BLK_T_IN
        vm.mem.write_obj(7u64, GuestAddress(hdr + 8)).unwrap(); // last sector
        vm.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let head = q.add_chain(&[(hdr, 16, false), (data, 512, true), (status, 1, true)]);
        q.publish(head);
        vm.kick(0);
        assert_eq!(vm.manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(q.used_elem(0), (u32::from(head), 513));
        assert_eq!(vm.mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 0);
        let mut got = [0u8; 512];
        vm.mem.read_slice(&mut got, GuestAddress(data)).unwrap();
        assert_eq!(got, [0xab; 512]);
        assert_eq!(vm.line.count(), 1);
    }

    #[test]
    fn a_poisoned_transport_stops_the_handler_not_the_thread() {
        let mut vm = attach(Box::new(Rng::new().unwrap()));
        let evt = vm.transport.lock().unwrap().notify_eventfds()[0]
            .try_clone()
            .unwrap();
        let transport = vm.transport.clone();
        let _ = std::thread::spawn(move || {
            let _guard = transport.lock().unwrap();
            panic!("poison the transport");
        })
        .join();
        evt.write(1).unwrap();
        assert_eq!(vm.manager.run_with_timeout(1000).unwrap(), 1);
        // The handler stopped watching the queue: further kicks wake nothing.
        evt.write(1).unwrap();
        assert_eq!(vm.manager.run_with_timeout(0).unwrap(), 0);
    }
}
