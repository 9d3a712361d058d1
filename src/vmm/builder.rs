//! The one place that builds VMs, in order: KVM, memory, VM (irqchip), devices on the buses,
//! guest image and boot structures, vCPUs, then the threads that run them. Each step is an
//! `attach_*`/`load_*`/`create_*` helper; [`run_hello`] and [`boot_linux`] differ only in what
//! they load and how many vCPUs they run.
//!
//! # Booting Linux
//!
//! [`boot_linux`] takes a [`LinuxVmConfig`] (kernel, initrd, command line, vCPUs, memory,
//! console, virtio disks, rng, vsock and net) and runs the VM until it ends, returning how it ended
//! ([`GuestExit`]) and its [`BootTimes`]. The steps, in order:
//!
//! 1. open and check KVM ([`Kvm::open`]);
//! 2. map guest RAM below and above the 32-bit MMIO gap ([`memory::create_guest_memory`]);
//! 3. create the VM with its TSS and identity-map pages, then the in-kernel PIC, IOAPIC,
//!    local APICs and PIT;
//! 4. devices: COM1 on IRQ 4 (irqfd) writing to the console, the i8042 (reset ends the VM),
//!    the boot-signal page, then one virtio-mmio window per disk / rng / vsock / net at
//!    [`VIRTIO_MMIO_START`] + 4 KiB × n on IRQ 5 + n (irqfd, ioeventfd per queue, served by
//!    one device thread, which also serves vsock's host sockets and net's tap);
//! 5. the kernel ([`linux::load_kernel`]: PVH if the ELF has the note, else the 64-bit boot
//!    protocol), the initrd at the top of low RAM, the command line (base + one
//!    `virtio_mmio.device=` per device), the MP table, then the PVH start info or the zero page;
//! 6. per vCPU: CPUID ([`filter_cpuid`]), boot MSRs, LAPIC LINT0/LINT1, registers and FPU for
//!    the chosen entry;
//! 7. one thread per vCPU; the first one to stop (or the i8042) stops the VM, and the others
//!    are kicked out of `KVM_RUN` with a signal. Unless `seccomp` is off, each thread first
//!    confines itself to its syscall allow-list ([`crate::vmm::seccomp`]): a vCPU thread
//!    before its first `KVM_RUN`, the device thread before its loop, the main thread once
//!    every other thread is started.
//!
//! What happens is also told as it happens, as [`VmmEvent`]s on an [`EventSink`] (see
//! [`crate::vmm::events`]).
//!
//! A pod runtime boots a VM with its agent by calling [`boot_linux`] with the agent's
//! initramfs as `initrd` (its `/init` is the agent), the pod's images as `disks`, and its own
//! console target; the guest ends the VM with `reboot(RB_AUTOBOOT)`, which is a
//! [`GuestExit::Reboot`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{Cap, IoEventAddress};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::logfile::{CONSOLE_MAX_BYTES, CappedWriter};
use crate::vmm::boot::linux::{self, BootProtocol, LinuxBootError};
use crate::vmm::boot::mptable::{self, MptableError};
use crate::vmm::boot::{BootError, LongModeEntry, PvhEntry};
use crate::vmm::bus::{Bus, BusError};
use crate::vmm::config::{self, ConfigError};
use crate::vmm::cpuid::{CpuidHost, VcpuTopology, filter_cpuid};
use crate::vmm::devices::boot_signal::{BootSignal, BootTimer, BootTimes, TimedWriter};
use crate::vmm::devices::i8042::{I8042, I8042_WINDOW};
use crate::vmm::devices::serial::SerialDevice;
use crate::vmm::events::{EventSink, VmmEvent};
use crate::vmm::hello::{self, HelloError};
use crate::vmm::jail::{self, JailConfig, JailError, JailPaths};
use crate::vmm::kvm::{Kvm, KvmError};
use crate::vmm::layout::{
    BOOT_SIGNAL_ADDRESS, BOOT_SIGNAL_SIZE, HIMEM_START, I8042_DATA_PORT, IRQ_LAST, PVH_START_INFO,
    SERIAL_COM1_IRQ, SERIAL_COM1_PORT, SERIAL_PORT_WINDOW, VIRTIO_IRQ_FIRST, VIRTIO_MMIO_START,
    ZERO_PAGE_START,
};
use crate::vmm::memory::{self, GuestMemory, MemoryError};
use crate::vmm::seccomp::{self, SeccompError, ThreadKind};
use crate::vmm::stop::{FaultReport, GuestExit, VmStop};
use crate::vmm::vcpu::{Vcpu, VcpuError, VcpuStop};
use crate::vmm::virtio::block::{Block, BlockError};
use crate::vmm::virtio::event::HostFdHandler;
use crate::vmm::virtio::mmio::MmioError;
use crate::vmm::virtio::net::{Net, NetConfig, NetError, NetHost};
use crate::vmm::virtio::rng::{Rng, RngError};
use crate::vmm::virtio::vsock::{Vsock, VsockError, VsockHost};
use crate::vmm::virtio::{
    Interrupt, MMIO_WINDOW_SIZE, MmioQueueHandler, MmioSlot, MmioTransport, VirtioDevice,
};
use crate::vmm::vm::{Vm, VmError};

/// Guest RAM for the built-in guest.
pub const HELLO_MEMORY: u64 = 4 << 20;
/// Guest RAM for a Linux VM unless asked otherwise.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// How long the VMM waits for vCPU threads to leave the guest once the VM is stopping.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a vCPU thread is kicked while the VMM waits for it.
const VCPU_KICK_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("VM: {0}")]
    Vm(#[from] VmError),
    #[error("boot setup: {0}")]
    Boot(#[from] BootError),
    #[error("vCPU: {0}")]
    Vcpu(#[from] VcpuError),
    #[error("device placement: {0}")]
    Bus(#[from] BusError),
    #[error("cannot create the serial port's interrupt eventfd: {0}")]
    Serial(#[source] std::io::Error),
    #[error("built-in guest: {0}")]
    Hello(#[from] HelloError),
    #[error("cannot load {what} ({len} bytes) at guest address {addr:#x}: {source}")]
    Load {
        what: &'static str,
        addr: u64,
        len: usize,
        #[source]
        source: GuestMemoryError,
    },
    #[error(transparent)]
    Linux(#[from] LinuxBootError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("invalid VM configuration: {0}")]
    Invalid(#[from] ConfigError),
    #[error(
        "cannot open the console file {path}: {source}; check the directory exists and is writable"
    )]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wire {what} to IRQ {irq} (KVM irqfd): {source}")]
    Irqfd {
        what: &'static str,
        irq: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{device}: cannot register queue {queue}'s notification with KVM (ioeventfd): {source}"
    )]
    Ioeventfd {
        device: &'static str,
        queue: usize,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error("virtio-mmio: {0}")]
    Virtio(#[from] MmioError),
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error(transparent)]
    Rng(#[from] RngError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the virtio device thread: {0}")]
    DeviceThread(String),
    #[error(
        "too many virtio devices: {count}; IRQs {VIRTIO_IRQ_FIRST}..={IRQ_LAST} allow at most {max}"
    )]
    TooManyDevices { count: usize, max: u32 },
    #[error("KVM_SET_CPUID2 input: {0}")]
    Cpuid(String),
    #[error("cannot set up vCPU kicks (signal {signal}): {source}")]
    KickSignal {
        signal: i32,
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error("cannot start the vCPU {id} thread: {source}")]
    Thread {
        id: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Puts a UART writing to `out` at COM1 on `pio`; returns it (for its interrupt eventfd).
pub fn attach_serial<W: Write + Send + 'static>(
    pio: &mut Bus,
    out: W,
) -> Result<Arc<Mutex<SerialDevice<W>>>, BuildError> {
    let serial = Arc::new(Mutex::new(
        SerialDevice::new(out).map_err(BuildError::Serial)?,
    ));
    pio.insert(
        "serial (COM1)",
        u64::from(SERIAL_COM1_PORT),
        SERIAL_PORT_WINDOW,
        serial.clone(),
    )?;
    Ok(serial)
}

/// Copies `bytes` into guest memory at `addr`.
pub fn load_bytes(
    mem: &GuestMemory,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), BuildError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BuildError::Load {
            what,
            addr,
            len: bytes.len(),
            source,
        })
}

/// Creates vCPU `id` with KVM's supported CPUID and puts it at `entry` in long mode.
pub fn create_long_mode_vcpu(
    kvm: &Kvm,
    vm: &Vm,
    id: u64,
    entry: &LongModeEntry,
    pio: &Bus,
    mmio: &Bus,
) -> Result<Vcpu, BuildError> {
    let vcpu = Vcpu::new(id, vm.create_vcpu_fd(id)?, pio.clone(), mmio.clone());
    vcpu.set_cpuid(&kvm.supported_cpuid()?)?;
    vcpu.enter_long_mode(entry)?;
    Ok(vcpu)
}

/// Builds a VM running the built-in guest (see [`hello`]) with its serial port writing to
/// `out`, and runs it until its vCPU stops. The guest halts after writing
/// [`hello::MESSAGE`], so a working VMM returns [`VcpuStop::Halted`].
///
/// The VM has no in-kernel irqchip, so the guest's `HLT` reaches us as an exit.
pub fn run_hello<W: Write + Send + 'static>(out: W) -> Result<VcpuStop, BuildError> {
    let code = hello::program(SERIAL_COM1_PORT, hello::MESSAGE)?;
    run_code(&code, out).map(|(stop, _)| stop)
}

/// Runs `code` (64-bit, position-independent, loaded at [`HIMEM_START`] in identity-mapped
/// memory, a serial port at COM1 writing to `out`) on one vCPU until it stops; with a triple
/// fault, also what the vCPU reported about it (tests check that report on a guest that
/// faults at its first instruction).
pub fn run_code<W: Write + Send + 'static>(
    code: &[u8],
    out: W,
) -> Result<(VcpuStop, Option<FaultReport>), BuildError> {
    let kvm = Kvm::open()?;
    let memory = memory::create_guest_memory(HELLO_MEMORY)?;
    let vm = Vm::new(&kvm, memory)?;

    let mut pio = Bus::new();
    let mmio = Bus::new();
    attach_serial(&mut pio, out)?;

    load_bytes(vm.memory(), "built-in guest", HIMEM_START, code)?;
    let entry = LongModeEntry::write(vm.memory(), HIMEM_START)?;

    let mut vcpu = create_long_mode_vcpu(&kvm, &vm, 0, &entry, &pio, &mmio)?;
    let stop = vcpu.run()?;
    let fault = (stop == VcpuStop::Shutdown).then(|| vcpu.fault_report());
    Ok((stop, fault))
}

/// Where the guest's serial console goes.
pub enum Console {
    /// The VMM's standard output.
    Stdout,
    /// A file, created or truncated, that stops at [`CONSOLE_MAX_BYTES`] with a marker line
    /// (the guest writes to it as fast and as long as it likes).
    File(PathBuf),
    /// Nowhere (the guest still has a serial port; its output is dropped).
    Off,
    /// Any writer (a pod runtime's log pipe, a test buffer).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Console::Stdout => write!(f, "Stdout"),
            Console::File(p) => write!(f, "File({})", p.display()),
            Console::Off => write!(f, "Off"),
            Console::Writer(_) => write!(f, "Writer(..)"),
        }
    }
}

impl Console {
    fn into_writer(self) -> Result<Box<dyn Write + Send>, BuildError> {
        Ok(match self {
            Console::Stdout => Box::new(std::io::stdout()),
            Console::File(path) => {
                let file = std::fs::File::create(&path)
                    .map_err(|source| BuildError::Console { path, source })?;
                // Lines reach the cap whole: the file ends on a full line and the marker.
                Box::new(std::io::LineWriter::new(CappedWriter::new(
                    file,
                    "the guest console",
                    CONSOLE_MAX_BYTES,
                )))
            }
            Console::Off => Box::new(std::io::sink()),
            Console::Writer(w) => w,
        })
    }
}

/// A raw disk image given to the guest as a virtio-blk device (`/dev/vda`, `/dev/vdb`, ... in
/// the order given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// A virtio-vsock device with Firecracker's hybrid host side (see
/// [`crate::vmm::virtio::vsock`]): the host reaches guest port P by connecting to `uds_path`
/// and sending `CONNECT P\n`; a guest connect to CID 2 port P reaches a host listener on
/// `<uds_path>_P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub uds_path: PathBuf,
    /// The guest's CID, 3 or more.
    pub guest_cid: u64,
}

/// Everything [`boot_linux`] needs.
#[derive(Debug)]
pub struct LinuxVmConfig {
    /// An ELF vmlinux (PVH or not) or a bzImage.
    pub kernel: PathBuf,
    /// An initramfs (its `/init` runs first).
    pub initrd: Option<PathBuf>,
    /// The command line before the device fragments; [`linux::DEFAULT_CMDLINE`] if `None`.
    pub cmdline: Option<String>,
    /// vCPUs, 1..=[`mptable::MAX_CPUS`].
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    pub console: Console,
    pub disks: Vec<DiskConfig>,
    /// Attach a virtio-rng (the guest's `/dev/hwrng`, and entropy for its RNG).
    pub rng: bool,
    /// Attach a virtio-vsock.
    pub vsock: Option<VsockConfig>,
    /// Attach a virtio-net on an inherited tap.
    pub net: Option<NetConfig>,
    /// Confine each VMM thread to its syscall allow-list once the guest can run (see
    /// [`crate::vmm::seccomp`]); off only for debugging.
    pub seccomp: bool,
    /// Confine this process before the guest runs (see [`crate::vmm::jail`]); `None` only
    /// for debugging, or where the caller is not a VMM process of its own.
    pub jail: Option<JailConfig>,
}

impl LinuxVmConfig {
    /// A config with defaults: one vCPU, [`DEFAULT_MEMORY_MIB`], console on stdout, no
    /// devices.
    pub fn new(kernel: PathBuf) -> Self {
        LinuxVmConfig {
            kernel,
            initrd: None,
            cmdline: None,
            cpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            console: Console::Stdout,
            disks: Vec::new(),
            rng: false,
            vsock: None,
            net: None,
            seccomp: true,
            jail: None,
        }
    }

    /// Checks what can be checked before touching KVM (the same checks as
    /// [`VmmConfig::validate`](crate::vmm::config::VmmConfig::validate)); returns the memory
    /// size in bytes.
    pub fn validate(&self) -> Result<u64, BuildError> {
        let devices = config::device_count(
            self.disks.len(),
            self.rng,
            self.vsock.as_ref(),
            self.net.as_ref(),
        );
        config::check_vsock(self.vsock.as_ref())?;
        config::check_net(self.net.as_ref())?;
        Ok(config::check(self.cpus, devices, self.memory_mib)?)
    }
}

/// How a Linux VM ended, and how long its boot took.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    pub exit: GuestExit,
    pub times: BootTimes,
}

/// The virtio-mmio slot of the `n`th device.
pub fn virtio_slot(n: usize) -> Option<MmioSlot> {
    let irq = VIRTIO_IRQ_FIRST.checked_add(u32::try_from(n).ok()?)?;
    (irq <= IRQ_LAST).then(|| MmioSlot {
        base: VIRTIO_MMIO_START + n as u64 * MMIO_WINDOW_SIZE,
        irq,
    })
}

/// The device thread's event loop and the subscribers on it.
pub type DeviceEventManager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Puts a virtio device on the MMIO bus at `slot`: its interrupt as an irqfd on `slot.irq`,
/// its queue notifications as ioeventfds, its queues served by `events`. Returns the kernel
/// command-line fragment that announces it.
pub fn attach_virtio(
    vm: &Vm,
    mmio: &mut Bus,
    events: &mut DeviceEventManager,
    slot: MmioSlot,
    device: Box<dyn VirtioDevice>,
) -> Result<String, BuildError> {
    let name = device.name();
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BuildError::Irqfd {
        what: name,
        irq: slot.irq,
        source,
    })?;
    vm.fd()
        .register_irqfd(&irqfd, slot.irq)
        .map_err(|e| BuildError::Irqfd {
            what: name,
            irq: slot.irq,
            source: e.into(),
        })?;
    let transport = MmioTransport::new(vm.memory().clone(), device, Interrupt::new(irqfd))?;
    for (queue, evt) in transport.notify_eventfds().iter().enumerate() {
        vm.fd()
            .register_ioevent(
                evt,
                &IoEventAddress::Mmio(slot.notify_address()),
                queue as u32,
            )
            .map_err(|source| BuildError::Ioeventfd {
                device: name,
                queue,
                source,
            })?;
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(name, slot.base, MMIO_WINDOW_SIZE, transport.clone())?;
    let handler =
        MmioQueueHandler::new(transport).map_err(|e| BuildError::DeviceThread(e.to_string()))?;
    events.add_subscriber(Arc::new(Mutex::new(handler)));
    Ok(slot.cmdline_fragment())
}

/// Puts the i8042 stub at ports 0x60..=0x64; its reset command stops the VM through `stop`.
pub fn attach_i8042(pio: &mut Bus, stop: Arc<VmStop>) -> Result<(), BuildError> {
    pio.insert(
        "i8042",
        u64::from(I8042_DATA_PORT),
        I8042_WINDOW,
        Arc::new(Mutex::new(I8042::new(stop))),
    )?;
    Ok(())
}

/// Puts the boot-signal page at [`BOOT_SIGNAL_ADDRESS`].
pub fn attach_boot_signal(mmio: &mut Bus, timer: Arc<BootTimer>) -> Result<(), BuildError> {
    mmio.insert(
        "boot signal",
        BOOT_SIGNAL_ADDRESS,
        BOOT_SIGNAL_SIZE,
        Arc::new(Mutex::new(BootSignal::new(timer))),
    )?;
    Ok(())
}

/// Where a vCPU starts.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Pvh(PvhEntry),
    Long(LongModeEntry),
}

/// What every vCPU of a Linux VM is set up from.
struct VcpuPlan<'a> {
    supported: &'a CpuId,
    host: CpuidHost,
    count: u8,
    entry: Entry,
    pio: &'a Bus,
    mmio: &'a Bus,
}

/// Creates vCPU `id` with filtered CPUID, boot MSRs, LAPIC LINT wiring and the registers for
/// the entry.
fn create_linux_vcpu(vm: &Vm, plan: &VcpuPlan<'_>, id: u8) -> Result<Vcpu, BuildError> {
    let VcpuPlan {
        supported,
        host,
        count,
        entry,
        pio,
        mmio,
    } = *plan;
    let vcpu = Vcpu::new(
        u64::from(id),
        vm.create_vcpu_fd(u64::from(id))?,
        pio.clone(),
        mmio.clone(),
    );
    let entries = filter_cpuid(
        supported.as_slice(),
        VcpuTopology { index: id, count },
        host,
    );
    let cpuid = CpuId::from_entries(&entries).map_err(|e| BuildError::Cpuid(format!("{e:?}")))?;
    vcpu.set_cpuid(&cpuid)?;
    vcpu.set_boot_msrs()?;
    vcpu.set_lint_modes()?;
    // Application processors wait for INIT/SIPI from the boot processor, which resets their
    // registers; setting them anyway keeps every vCPU in a known state.
    match entry {
        Entry::Pvh(e) => vcpu.enter_pvh(&e)?,
        Entry::Long(e) => vcpu.enter_long_mode(&e)?,
    }
    Ok(vcpu)
}

/// Builds a Linux VM from `config` and runs it until it ends. `start` is when the VMM
/// started (boot times count from it). Tells `vmm_events` as it goes: `started` once the config
/// is checked, `running` once the vCPUs run, `boot_signal` the moment the guest sends it,
/// `exited` at the end (a build error is the caller's to report, as `failed`).
pub fn boot_linux(
    config: LinuxVmConfig,
    start: Instant,
    vmm_events: &Arc<EventSink>,
) -> Result<VmOutcome, BuildError> {
    let mem_size = config.validate()?;
    vmm_events.emit(&VmmEvent::Started {
        pid: std::process::id(),
    });

    // 1-3: KVM, memory, VM with irqchip.
    let kvm = Kvm::open()?;
    let memory = memory::create_guest_memory(mem_size)?;
    let vm = Vm::new(&kvm, memory)?;
    vm.create_irqchip()?;
    let phase = |what: &str| tracing::debug!("{what} at {:.1} ms", ms_since(start));
    phase("VM created");

    // 4: devices.
    let stop = VmStop::new();
    let on_signal = vmm_events.clone();
    let timer = BootTimer::with_signal_hook(
        start,
        Box::new(move |at| {
            on_signal.emit(&VmmEvent::BootSignal {
                ms: at.as_secs_f64() * 1e3,
            })
        }),
    );
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let console = TimedWriter::new(config.console.into_writer()?, timer.clone());
    let serial = attach_serial(&mut pio, console)?;
    {
        let serial = serial
            .lock()
            .map_err(|_| BuildError::Config("serial lock poisoned".into()))?;
        vm.fd()
            .register_irqfd(serial.interrupt_evt(), SERIAL_COM1_IRQ)
            .map_err(|e| BuildError::Irqfd {
                what: "the serial port",
                irq: SERIAL_COM1_IRQ,
                source: e.into(),
            })?;
    }
    attach_i8042(&mut pio, stop.clone())?;
    attach_boot_signal(&mut mmio, timer.clone())?;

    let mut events =
        DeviceEventManager::new().map_err(|e| BuildError::DeviceThread(format!("{e:?}")))?;
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let serial = format!("peapod-disk{i}");
        devices.push(Box::new(Block::open(&disk.path, disk.read_only, &serial)?));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()?));
    }
    let mut vsock_host: Option<VsockHost> = None;
    if let Some(v) = &config.vsock {
        let (device, host) = Vsock::new(&v.uds_path, v.guest_cid)?;
        devices.push(Box::new(device));
        vsock_host = Some(host);
    }
    let mut net_host: Option<NetHost> = None;
    if let Some(n) = &config.net {
        let (device, host) = Net::from_config(n)?;
        devices.push(Box::new(device));
        net_host = Some(host);
    }
    let mut fragments = Vec::new();
    for (n, device) in devices.into_iter().enumerate() {
        let slot = virtio_slot(n).ok_or(BuildError::TooManyDevices {
            count: n + 1,
            max: IRQ_LAST - VIRTIO_IRQ_FIRST + 1,
        })?;
        fragments.push(attach_virtio(&vm, &mut mmio, &mut events, slot, device)?);
    }
    if let Some(host) = vsock_host {
        let handler =
            HostFdHandler::new(host).map_err(|e| BuildError::DeviceThread(e.to_string()))?;
        events.add_subscriber(Arc::new(Mutex::new(handler)));
    }
    if let Some(host) = net_host {
        let handler =
            HostFdHandler::new(host).map_err(|e| BuildError::DeviceThread(e.to_string()))?;
        events.add_subscriber(Arc::new(Mutex::new(handler)));
    }
    let has_virtio = !fragments.is_empty();

    // 5: kernel, initrd, command line, boot structures.
    let mem = vm.memory();
    phase("devices attached");
    let kernel = linux::load_kernel(mem, mem_size, &config.kernel)?;
    phase("kernel loaded");
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| linux::load_initrd(mem, mem_size, kernel.end, path))
        .transpose()?;
    phase("initrd loaded");
    let cmdline = linux::kernel_cmdline(config.cmdline.as_deref(), &fragments)?;
    let cmdline_len = linux::write_cmdline(mem, &cmdline)?;
    let memmap = linux::memory_map(mem_size)?;
    mptable::write_mptable(mem, config.cpus)?;
    let entry = match kernel.protocol {
        BootProtocol::Pvh { entry } => {
            linux::write_pvh_boot_info(mem, &memmap, initrd)?;
            Entry::Pvh(PvhEntry::write(mem, entry, PVH_START_INFO)?)
        }
        BootProtocol::Linux64 { entry } => {
            let params = linux::zero_page(kernel.setup_header, &memmap, cmdline_len, initrd)?;
            linux::write_zero_page(mem, params)?;
            let mut long = LongModeEntry::write(mem, entry)?;
            long.rsi = ZERO_PAGE_START;
            Entry::Long(long)
        }
    };
    tracing::info!(
        "kernel {} ({:?}), initrd {:?}, {} vCPUs, {} MiB, cmdline: {}",
        config.kernel.display(),
        kernel.protocol,
        initrd,
        config.cpus,
        config.memory_mib,
        cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    );

    // 6: vCPUs.
    let supported = kvm.supported_cpuid()?;
    let host = CpuidHost {
        tsc_deadline: kvm.fd().check_extension(Cap::TscDeadlineTimer),
    };
    let plan = VcpuPlan {
        supported: &supported,
        host,
        count: config.cpus,
        entry,
        pio: &pio,
        mmio: &mmio,
    };
    let vcpus = (0..config.cpus)
        .map(|id| create_linux_vcpu(&vm, &plan, id))
        .collect::<Result<Vec<_>, _>>()?;
    phase("vCPUs created");

    // 7: the jail, while this is the only thread; then run, each thread under its seccomp
    // filter once the guest can reach it.
    if let Some(jail) = &config.jail {
        let paths = JailPaths {
            keep: config
                .vsock
                .as_ref()
                .and_then(|v| jail::keep_for_vsock(&v.uds_path))
                .into_iter()
                .collect(),
            guest_ram: mem_size,
        };
        let jailed = jail::enter(jail, &paths)?;
        tracing::info!("jailed as uid {} gid {}", jailed.uid, jailed.gid);
        phase("jailed");
    }
    let filters = config
        .seccomp
        .then(|| ThreadFilters::new(kick_signal()))
        .transpose()?;
    let device_thread = has_virtio
        .then(|| spawn_device_thread(events, stop.clone(), filters.as_ref()))
        .transpose()?;
    timer.mark_vcpus_started();
    let exit = run_vcpus(vcpus, &stop, vmm_events, filters.as_ref())?;
    if let Some(t) = device_thread {
        let _ = t.join();
    }
    let times = timer.times();
    tracing::info!("VM ended: {exit}; {times}");
    vmm_events.emit(&VmmEvent::exited(&exit, &times));
    Ok(VmOutcome { exit, times })
}

/// The compiled seccomp filters of a VM's threads (see [`crate::vmm::seccomp`]), built on the
/// main thread before any other thread starts.
struct ThreadFilters {
    vcpu: seccompiler::BpfProgram,
    device: seccompiler::BpfProgram,
    main: seccompiler::BpfProgram,
}

impl ThreadFilters {
    fn new(kick: i32) -> Result<Self, SeccompError> {
        Ok(ThreadFilters {
            vcpu: seccomp::filter(ThreadKind::Vcpu, kick)?,
            device: seccomp::filter(ThreadKind::Device, kick)?,
            main: seccomp::filter(ThreadKind::Main, kick)?,
        })
    }
}

fn spawn_device_thread(
    mut events: DeviceEventManager,
    stop: Arc<VmStop>,
    filters: Option<&ThreadFilters>,
) -> Result<std::thread::JoinHandle<()>, BuildError> {
    let filter = filters.map(|f| f.device.clone());
    std::thread::Builder::new()
        .name("virtio".into())
        .spawn(move || {
            if let Some(filter) = filter
                && let Err(e) = seccomp::install(ThreadKind::Device, &filter)
            {
                tracing::error!("virtio device thread: {e}");
                stop.request(GuestExit::VcpuFailed {
                    vcpu: 0,
                    message: format!("the virtio device thread: {e}"),
                });
                return;
            }
            // Wakes at least every 100 ms to see whether the VM is stopping.
            while !stop.is_requested() {
                if let Err(e) = events.run_with_timeout(100) {
                    tracing::error!("virtio device thread: event loop failed: {e:?}; devices stop");
                    stop.request(GuestExit::VcpuFailed {
                        vcpu: 0,
                        message: format!("the virtio device thread failed: {e:?}"),
                    });
                    return;
                }
            }
        })
        .map_err(|e| BuildError::DeviceThread(e.to_string()))
}

/// Milliseconds since `start`, for the debug log of a build's phases.
fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`; its handler does nothing (the
/// interrupted `KVM_RUN` returning `EINTR` is the point).
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Maps why one vCPU stopped to why the VM ends; `fault` is the vCPU's report of a triple
/// fault.
fn guest_exit(
    vcpu: u64,
    stopped: Result<Option<VcpuStop>, VcpuError>,
    fault: Option<FaultReport>,
) -> Option<GuestExit> {
    match stopped {
        Ok(None) => None,
        Ok(Some(VcpuStop::Shutdown)) => Some(GuestExit::TripleFault {
            vcpu,
            fault: fault.unwrap_or_default(),
        }),
        Ok(Some(VcpuStop::Halted)) => Some(GuestExit::Halted { vcpu }),
        Ok(Some(VcpuStop::SystemEvent(KVM_SYSTEM_EVENT_RESET))) => Some(GuestExit::Reboot),
        Ok(Some(VcpuStop::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN))) => Some(GuestExit::PowerOff),
        Ok(Some(VcpuStop::SystemEvent(kind))) => Some(GuestExit::SystemEvent { vcpu, kind }),
        Err(e) => Some(GuestExit::VcpuFailed {
            vcpu,
            message: e.to_string(),
        }),
    }
}

/// Runs each vCPU on its own thread until the VM stops, then brings every thread home. With
/// `filters`, each vCPU thread installs its seccomp filter right before its first `KVM_RUN`,
/// and this (main) thread installs its own once every thread is started.
fn run_vcpus(
    vcpus: Vec<Vcpu>,
    stop: &Arc<VmStop>,
    events: &EventSink,
    filters: Option<&ThreadFilters>,
) -> Result<GuestExit, BuildError> {
    let signal = kick_signal();
    register_signal_handler(signal, on_kick)
        .map_err(|source| BuildError::KickSignal { signal, source })?;
    let mut threads = Vec::with_capacity(vcpus.len());
    for mut vcpu in vcpus {
        let id = vcpu.id();
        let stop_for_thread = stop.clone();
        let filter = filters.map(|f| f.vcpu.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if let Some(filter) = filter
                    && let Err(e) = seccomp::install(ThreadKind::Vcpu, &filter)
                {
                    stop_for_thread.request(GuestExit::VcpuFailed {
                        vcpu: id,
                        message: e.to_string(),
                    });
                    return;
                }
                let stopped = vcpu.run_until(&stop_for_thread);
                let fault =
                    matches!(stopped, Ok(Some(VcpuStop::Shutdown))).then(|| vcpu.fault_report());
                if let Some(exit) = guest_exit(id, stopped, fault) {
                    stop_for_thread.request(exit);
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(source) => {
                stop.request(GuestExit::VcpuFailed {
                    vcpu: id,
                    message: format!("cannot start its thread: {source}"),
                });
                stop_threads(threads, signal);
                return Err(BuildError::Thread { id, source });
            }
        }
    }
    if let Some(f) = filters
        && let Err(e) = seccomp::install(ThreadKind::Main, &f.main)
    {
        stop.request(GuestExit::VcpuFailed {
            vcpu: 0,
            message: e.to_string(),
        });
        stop_threads(threads, signal);
        return Err(e.into());
    }
    events.emit(&VmmEvent::Running);
    let exit = stop.wait();
    stop_threads(threads, signal);
    Ok(exit)
}

/// Kicks every vCPU thread until it has left `KVM_RUN` and joins it (a thread that does not
/// leave within [`VCPU_STOP_TIMEOUT`] is left behind with a warning: the process is ending).
fn stop_threads(threads: Vec<std::thread::JoinHandle<()>>, signal: i32) {
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    let mut pending = threads;
    while !pending.is_empty() {
        let (done, running): (Vec<_>, Vec<_>) = pending.into_iter().partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        pending = running;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                "{} vCPU thread(s) did not stop; leaving them",
                pending.len()
            );
            break;
        }
        for t in &pending {
            let _ = t.kill(signal);
        }
        std::thread::sleep(VCPU_KICK_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::create_guest_memory;

    #[test]
    fn the_serial_port_sits_at_com1_and_prints() {
        let mut pio = Bus::new();
        let serial = attach_serial(&mut pio, Vec::new()).unwrap();
        for &b in b"ok" {
            pio.write(0x3f8, &[b]).unwrap();
        }
        assert_eq!(serial.lock().unwrap().writer().as_slice(), b"ok");
        assert_eq!(
            pio.describe(0x3ff).map(|(name, _)| name),
            Some("serial (COM1)")
        );
        assert!(pio.lookup(0x400).is_none());
        // A second COM1 is refused.
        assert!(matches!(
            attach_serial(&mut pio, Vec::new()),
            Err(BuildError::Bus(BusError::Overlap { .. }))
        ));
    }

    #[test]
    fn the_hello_image_fits_and_lands_where_the_vcpu_starts() {
        let mem = create_guest_memory(HELLO_MEMORY).unwrap();
        let code = hello::program(SERIAL_COM1_PORT, hello::MESSAGE).unwrap();
        load_bytes(&mem, "built-in guest", HIMEM_START, &code).unwrap();
        let entry = LongModeEntry::write(&mem, HIMEM_START).unwrap();
        let mut back = vec![0u8; code.len()];
        mem.read_slice(&mut back, GuestAddress(entry.rip)).unwrap();
        assert_eq!(back, code);
    }

    /// A writer whose bytes the test can read after the VM (which owns the writer) is gone.
    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Boots the built-in guest in-process on real KVM. Ignored by default (a plain
    /// `cargo test` must not need KVM); the e2e test `kvm::tiny_guest_writes_to_a_port_and_halts`
    /// covers the same path in the test bed. By hand, where hardware KVM is:
    /// `cargo test --lib -- --ignored the_built_in_guest`.
    #[test]
    #[ignore = "needs hardware KVM; covered by the e2e test bed"]
    fn the_built_in_guest_prints_its_message_and_halts_on_hardware_kvm() {
        let out = SharedBuffer::default();
        let stop = run_hello(out.clone()).unwrap();
        assert_eq!(stop, VcpuStop::Halted);
        assert_eq!(out.0.lock().unwrap().as_slice(), hello::MESSAGE);
    }

    #[test]
    fn virtio_slots_follow_each_other_up_to_the_last_irq() {
        assert_eq!(
            virtio_slot(0),
            Some(MmioSlot {
                base: 0xd000_0000,
                irq: 5
            })
        );
        assert_eq!(
            virtio_slot(2),
            Some(MmioSlot {
                base: 0xd000_2000,
                irq: 7
            })
        );
        assert_eq!(virtio_slot(18).map(|s| s.irq), Some(23));
        assert_eq!(virtio_slot(19), None);
        assert_eq!(virtio_slot(usize::MAX), None);
    }

    #[test]
    fn the_i8042_and_boot_signal_sit_where_the_layout_says() {
        let (mut pio, mut mmio) = (Bus::new(), Bus::new());
        let stop = VmStop::new();
        attach_i8042(&mut pio, stop.clone()).unwrap();
        attach_boot_signal(&mut mmio, BootTimer::new(Instant::now())).unwrap();
        assert_eq!(pio.describe(0x64).map(|(n, _)| n), Some("i8042"));
        assert!(pio.lookup(0x65).is_none());
        pio.write(0x64, &[0xfe]).unwrap();
        assert_eq!(stop.reason(), Some(GuestExit::Reboot));
        assert_eq!(
            mmio.describe(0xc000_0000).map(|(n, _)| n),
            Some("boot signal")
        );
    }

    #[test]
    fn configs_are_checked_before_kvm() {
        let mut c = LinuxVmConfig::new("/vmlinux".into());
        assert_eq!(c.validate().unwrap(), 256 << 20);
        c.cpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--cpus"));
        c.cpus = 2;
        c.disks = vec![
            DiskConfig {
                path: "/d".into(),
                read_only: true
            };
            19
        ];
        c.rng = true;
        assert!(matches!(
            c.validate(),
            Err(BuildError::Invalid(ConfigError::TooManyDevices {
                count: 20,
                max: 19
            }))
        ));
        c.disks.clear();
        c.memory_mib = u64::MAX;
        assert!(c.validate().is_err());
    }

    #[test]
    fn vcpu_stops_map_to_how_the_vm_ended() {
        assert_eq!(guest_exit(0, Ok(None), None), None);
        let fault = FaultReport {
            vmm_exits: 3,
            ..FaultReport::default()
        };
        assert_eq!(
            guest_exit(1, Ok(Some(VcpuStop::Shutdown)), Some(fault.clone())),
            Some(GuestExit::TripleFault { vcpu: 1, fault })
        );
        assert_eq!(
            guest_exit(
                0,
                Ok(Some(VcpuStop::SystemEvent(KVM_SYSTEM_EVENT_RESET))),
                None
            ),
            Some(GuestExit::Reboot)
        );
        assert_eq!(
            guest_exit(
                0,
                Ok(Some(VcpuStop::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN))),
                None
            ),
            Some(GuestExit::PowerOff)
        );
        assert!(matches!(
            guest_exit(2, Err(VcpuError::InternalError), None),
            Some(GuestExit::VcpuFailed { vcpu: 2, .. })
        ));
    }

    #[test]
    fn a_console_file_that_cannot_be_created_is_named() {
        let err = Console::File("/nonexistent/dir/console.log".into())
            .into_writer()
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/dir/console.log"),
            "{err}"
        );
    }

    /// Issue #12 (6): a guest that writes to its serial port without end fills the console
    /// file up to its cap and no further.
    #[test]
    fn a_console_file_stops_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        // What the serial port writes, in large chunks to be quick (the UART itself writes
        // and flushes byte by byte).
        let mut writer = Console::File(path.clone()).into_writer().unwrap();
        let chunk: Vec<u8> = (0..4096u32)
            .map(|i| if i % 64 == 63 { b'\n' } else { b'x' })
            .collect();
        let total = CONSOLE_MAX_BYTES + (1 << 20);
        for _ in 0..total / chunk.len() as u64 {
            writer.write_all(&chunk).unwrap();
        }
        drop(writer);
        let len = std::fs::metadata(&path).unwrap().len();
        let marker = CappedWriter::<Vec<u8>>::marker("the guest console", CONSOLE_MAX_BYTES);
        assert!(
            len <= CONSOLE_MAX_BYTES + marker.len() as u64,
            "the console file grew to {len} bytes"
        );
        let tail = crate::logfile::read_tail(&path, 4096).unwrap();
        let tail = String::from_utf8(tail).unwrap();
        assert!(tail.ends_with(&marker), "{tail}");
        assert_eq!(tail.matches("[peapod:").count(), 1);
    }

    #[test]
    fn loading_past_the_end_of_memory_is_an_error() {
        let mem = create_guest_memory(HELLO_MEMORY).unwrap();
        let err = load_bytes(&mem, "kernel", HELLO_MEMORY - 2, &[0; 4]).unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
    }
}
