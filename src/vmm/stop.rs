//! How a running VM ends: the first reason given wins, every vCPU thread sees it and leaves
//! its run loop, and the thread that started the VM wakes up with the reason.
//!
//! Anything can end the VM: a vCPU that stops (triple fault, a KVM system event, an error), or
//! a device on a vCPU thread (the i8042's reset line). A vCPU thread checks
//! [`VmStop::is_requested`] before every `KVM_RUN`; one that is inside the guest is kicked out
//! with a signal by whoever waits for the VM (see `builder`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Why a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest reset the machine (i8042 reset line, or a KVM reset event): how a peapod
    /// guest ends on purpose (`reboot -f` with `reboot=k`).
    Reboot,
    /// The guest asked KVM to power off (`KVM_SYSTEM_EVENT_SHUTDOWN`).
    PowerOff,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`): a crash during boot, or a kernel that
    /// rebooted by faulting because nothing answered on the i8042.
    TripleFault { vcpu: u64 },
    /// The guest reported a crash (`KVM_SYSTEM_EVENT_CRASH`) or another system event.
    SystemEvent { vcpu: u64, kind: u32 },
    /// A vCPU ran `HLT` (only guests without an in-kernel irqchip see this).
    Halted { vcpu: u64 },
    /// A vCPU could not go on.
    VcpuFailed { vcpu: u64, message: String },
}

impl GuestExit {
    /// Whether the guest ended the way a healthy guest does.
    pub fn is_clean(&self) -> bool {
        matches!(self, GuestExit::Reboot | GuestExit::PowerOff)
    }
}

impl std::fmt::Display for GuestExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestExit::Reboot => write!(f, "the guest rebooted"),
            GuestExit::PowerOff => write!(f, "the guest powered off"),
            GuestExit::TripleFault { vcpu } => write!(
                f,
                "vCPU {vcpu} triple-faulted (the guest crashed, or reset without an i8042); \
                 look at the guest console, or boot with `earlyprintk=ttyS0` in --cmdline"
            ),
            GuestExit::SystemEvent { vcpu, kind } => {
                let what = match *kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_CRASH => "a crash",
                    _ => "a system event",
                };
                write!(f, "vCPU {vcpu} reported {what} (KVM system event {kind})")
            }
            GuestExit::Halted { vcpu } => write!(f, "vCPU {vcpu} halted"),
            GuestExit::VcpuFailed { vcpu, message } => write!(f, "vCPU {vcpu} failed: {message}"),
        }
    }
}

/// The shared stop request of one VM.
#[derive(Debug, Default)]
pub struct VmStop {
    requested: AtomicBool,
    reason: Mutex<Option<GuestExit>>,
    changed: Condvar,
}

impl VmStop {
    pub fn new() -> Arc<Self> {
        Arc::new(VmStop::default())
    }

    /// Asks the VM to stop for `reason`; returns whether this was the first request (later
    /// reasons are logged and dropped).
    pub fn request(&self, reason: GuestExit) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            tracing::debug!("VM already stopping; ignoring {reason}");
            return false;
        }
        tracing::debug!("VM stopping: {reason}");
        *slot = Some(reason);
        self.requested.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        true
    }

    /// Whether a stop was requested (cheap: checked before every `KVM_RUN`).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The reason, once one was given.
    pub fn reason(&self) -> Option<GuestExit> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Blocks until a stop is requested and returns its reason.
    pub fn wait(&self) -> GuestExit {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(reason) = slot.as_ref() {
                return reason.clone();
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins() {
        let stop = VmStop::new();
        assert!(!stop.is_requested());
        assert_eq!(stop.reason(), None);
        assert!(stop.request(GuestExit::Reboot));
        assert!(!stop.request(GuestExit::TripleFault { vcpu: 1 }));
        assert!(stop.is_requested());
        assert_eq!(stop.wait(), GuestExit::Reboot);
    }

    #[test]
    fn wait_wakes_up_when_another_thread_stops_the_vm() {
        let stop = VmStop::new();
        let s = stop.clone();
        let t = std::thread::spawn(move || s.wait());
        std::thread::sleep(std::time::Duration::from_millis(10));
        stop.request(GuestExit::TripleFault { vcpu: 0 });
        assert_eq!(t.join().unwrap(), GuestExit::TripleFault { vcpu: 0 });
    }

    #[test]
    fn only_reboot_and_poweroff_are_clean_and_faults_say_what_to_do() {
        assert!(GuestExit::Reboot.is_clean() && GuestExit::PowerOff.is_clean());
        let fault = GuestExit::TripleFault { vcpu: 0 };
        assert!(!fault.is_clean());
        assert!(fault.to_string().contains("earlyprintk"), "{fault}");
        let crash = GuestExit::SystemEvent {
            vcpu: 1,
            kind: kvm_bindings::KVM_SYSTEM_EVENT_CRASH,
        };
        assert!(crash.to_string().contains("crash"), "{crash}");
    }
}
