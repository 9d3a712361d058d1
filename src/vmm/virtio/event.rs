//! The device thread's side of a virtio-mmio device: an `event_manager` subscriber that waits
//! on the device's queue-notify eventfds and serves a queue each time the guest kicks it.
//!
//! One `EventManager` on one thread serves every device: the VMM adds one
//! [`MmioQueueHandler`] per device and calls `run()` in a loop. The eventfds are the ones KVM
//! signals on a guest write to QueueNotify (ioeventfd); tests write to them directly and run a
//! single iteration.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

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
