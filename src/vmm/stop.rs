//! How a running VM ends: the first reason given wins, every vCPU thread sees it and leaves
//! its run loop, and the thread that started the VM wakes up with the reason.
//!
//! Anything can end the VM: a vCPU that stops (triple fault, a KVM system event, an error), or
//! a device on a vCPU thread (the i8042's reset line). A vCPU thread checks
//! [`VmStop::is_requested`] before every `KVM_RUN`; one that is inside the guest is kicked out
//! with a signal by whoever waits for the VM (see `builder`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::vmm::vcpu_stats::ExitCounts;

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
    TripleFault { vcpu: u64, fault: FaultReport },
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
            GuestExit::TripleFault { vcpu, fault } => {
                write!(f, "vCPU {vcpu} triple-faulted ")?;
                fault.describe(f)
            }
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

/// What the vCPU knew when the guest triple-faulted: enough to tell a fault at the guest's
/// first instructions (the boot state the VMM set up, or the host's KVM) from a crash of a
/// kernel that ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Exits this vCPU brought to the VMM (port and MMIO accesses) before the fault.
    pub vmm_exits: u64,
    /// KVM's own counts for this vCPU (every exit, those KVM handled included), where the
    /// host kernel has per-vCPU statistics.
    pub kvm: Option<ExitCounts>,
    /// Milliseconds from the vCPU's first entry to the fault.
    pub ran_ms: u64,
    /// The registers after the fault, as KVM reports them (`None`: not read).
    pub registers: Option<String>,
}

/// A vCPU that faults after at most this many exits of its own (host interrupts and signals
/// not counted) never got past its first instructions: a Linux boot exits thousands of times
/// (CPUID, MSRs, timers) before init.
pub const FIRST_INSTRUCTIONS_EXITS: u64 = 3;

impl FaultReport {
    /// Whether the guest died at its first instructions, by KVM's count of the exits this
    /// vCPU's guest caused; `None` without that count (exits to the VMM alone cannot tell: a
    /// quiet kernel that crashes early has made none either).
    pub fn at_first_instructions(&self) -> Option<bool> {
        let exits = self.kvm.as_ref().and_then(ExitCounts::guest_caused)?;
        Some(exits <= FIRST_INSTRUCTIONS_EXITS)
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = match &self.kvm {
            Some(k) => format!("KVM counted {k}; "),
            None => String::new(),
        };
        let facts = format!(
            "{counts}{} exits to the VMM, {} ms after its first entry",
            self.vmm_exits, self.ran_ms
        );
        let registers = match &self.registers {
            Some(r) => format!("; registers after the fault: {r}"),
            None => String::new(),
        };
        match self.at_first_instructions() {
            Some(true) => write!(
                f,
                "at the guest's first instructions ({facts}): the boot state the VMM set up \
                 (registers, page tables, boot data) or the host's KVM, not the guest kernel; \
                 on a nested or emulated host (the test bed) rerun it, elsewhere report it \
                 with this line{registers}"
            ),
            Some(false) => write!(
                f,
                "after the guest ran ({facts}): the guest kernel crashed, or reset without an \
                 i8042; look at the guest console, or boot with `earlyprintk=ttyS0` in \
                 --cmdline{registers}"
            ),
            None => write!(
                f,
                "({facts}; this host kernel has no per-vCPU KVM counts to say whether the \
                 guest got past its first instructions): the guest crashed, or reset without \
                 an i8042; look at the guest console, or boot with `earlyprintk=ttyS0` in \
                 --cmdline{registers}"
            ),
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
        assert!(!stop.request(GuestExit::TripleFault {
            vcpu: 1,
            fault: FaultReport::default()
        }));
        assert!(stop.is_requested());
        assert_eq!(stop.wait(), GuestExit::Reboot);
    }

    #[test]
    fn wait_wakes_up_when_another_thread_stops_the_vm() {
        let stop = VmStop::new();
        let s = stop.clone();
        let t = std::thread::spawn(move || s.wait());
        std::thread::sleep(std::time::Duration::from_millis(10));
        stop.request(GuestExit::TripleFault {
            vcpu: 0,
            fault: FaultReport::default(),
        });
        assert_eq!(
            t.join().unwrap(),
            GuestExit::TripleFault {
                vcpu: 0,
                fault: FaultReport::default()
            }
        );
    }

    #[test]
    fn only_reboot_and_poweroff_are_clean_and_faults_say_what_to_do() {
        assert!(GuestExit::Reboot.is_clean() && GuestExit::PowerOff.is_clean());
        let fault = GuestExit::TripleFault {
            vcpu: 0,
            fault: FaultReport::default(),
        };
        assert!(!fault.is_clean());
        assert!(fault.to_string().contains("earlyprintk"), "{fault}");
        let crash = GuestExit::SystemEvent {
            vcpu: 1,
            kind: kvm_bindings::KVM_SYSTEM_EVENT_CRASH,
        };
        assert!(crash.to_string().contains("crash"), "{crash}");
    }

    fn counts(exits: u64) -> ExitCounts {
        let mut counts = ExitCounts::default();
        counts.values[0] = Some(exits); // "exits"
        counts
    }

    #[test]
    fn exits_of_host_interrupts_and_signals_do_not_count_as_the_guest_running() {
        let with_host_exits = |exits, irq, signal| {
            let mut counts = counts(exits);
            counts.values[5] = Some(irq); // "irq_exits"
            counts.values[6] = Some(signal); // "signal_exits"
            FaultReport {
                kvm: Some(counts),
                ..FaultReport::default()
            }
        };
        // The test bed's case: a ud2 guest whose vCPU a host timer interrupt took out once.
        assert_eq!(with_host_exits(4, 1, 0).at_first_instructions(), Some(true));
        assert_eq!(with_host_exits(9, 5, 1).at_first_instructions(), Some(true));
        assert_eq!(
            with_host_exits(4, 0, 0).at_first_instructions(),
            Some(false)
        );
        assert_eq!(
            with_host_exits(1800, 700, 2).at_first_instructions(),
            Some(false)
        );
        // Counters that do not add up never wrap around.
        assert_eq!(with_host_exits(1, 5, 5).at_first_instructions(), Some(true));
        assert_eq!(
            with_host_exits(u64::MAX, u64::MAX, u64::MAX).at_first_instructions(),
            Some(true)
        );
    }

    #[test]
    fn a_triple_fault_says_whether_the_guest_got_past_its_first_instructions() {
        let early = FaultReport {
            vmm_exits: 0,
            kvm: Some(counts(1)),
            ran_ms: 2,
            registers: Some("rip 0xfff0".into()),
        };
        assert_eq!(early.at_first_instructions(), Some(true));
        let text = GuestExit::TripleFault {
            vcpu: 0,
            fault: early,
        }
        .to_string();
        assert!(text.contains("at the guest's first instructions"), "{text}");
        assert!(
            text.contains("KVM counted exits 1; 0 exits to the VMM, 2 ms"),
            "{text}"
        );
        assert!(
            text.contains("registers after the fault: rip 0xfff0"),
            "{text}"
        );

        let late = FaultReport {
            vmm_exits: 40,
            kvm: Some(counts(1800)),
            ran_ms: 245,
            registers: None,
        };
        assert_eq!(late.at_first_instructions(), Some(false));
        let text = GuestExit::TripleFault {
            vcpu: 1,
            fault: late,
        }
        .to_string();
        assert!(
            text.starts_with("vCPU 1 triple-faulted after the guest ran"),
            "{text}"
        );
        assert!(text.contains("earlyprintk"), "{text}");

        let unknown = FaultReport {
            vmm_exits: 0,
            ..FaultReport::default()
        };
        assert_eq!(unknown.at_first_instructions(), None);
        let text = GuestExit::TripleFault {
            vcpu: 0,
            fault: unknown,
        }
        .to_string();
        assert!(text.contains("no per-vCPU KVM counts"), "{text}");
    }
}
