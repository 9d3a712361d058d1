//! Boot timing: when the VMM started, when the guest first wrote to its console, and when the
//! guest said it was up.
//!
//! **The boot signal.** A guest signals "my init is running" by writing the byte
//! [`BOOT_SIGNAL_VALUE`] (123) to guest-physical address [`BOOT_SIGNAL_ADDRESS`]
//! (0xc000_0000, the first page of the MMIO gap), as Firecracker's boot timer does. From a
//! shell in the guest: `devmem 0xc0000000 8 123` (needs `/dev/mem`, `CONFIG_DEVMEM`); a Rust
//! agent maps `/dev/mem` at that page and writes one byte. Only the first such write counts;
//! other values and offsets are ignored. The VMM logs the time since it started (a `tracing`
//! line at info level, `PEAPOD_LOG=info`), tells its hook at once (a `boot_signal` event on
//! `--events-fd`, see [`crate::vmm::events`]) and reports it in [`BootTimes`] (`peapod vm boot
//! --boot-timing`, and the `exited` event).
//!
//! [`BOOT_SIGNAL_ADDRESS`]: crate::vmm::layout::BOOT_SIGNAL_ADDRESS

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::vmm::bus::BusDevice;

/// The byte a guest writes to say it has booted.
pub const BOOT_SIGNAL_VALUE: u8 = 123;

/// Called once, on the vCPU thread that saw it, with the time of the boot signal.
pub type SignalHook = Box<dyn Fn(Duration) + Send + Sync>;

/// Times since the VMM started, filled in as the guest gets there.
pub struct BootTimer {
    start: Instant,
    vcpus_started: OnceLock<Duration>,
    first_output: OnceLock<Duration>,
    signal: OnceLock<Duration>,
    on_signal: Option<SignalHook>,
}

impl std::fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootTimer")
            .field("start", &self.start)
            .field("vcpus_started", &self.vcpus_started)
            .field("first_output", &self.first_output)
            .field("signal", &self.signal)
            .field("on_signal", &self.on_signal.is_some())
            .finish()
    }
}

/// What a [`BootTimer`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimes {
    /// VMM start to the vCPU threads' start: the VMM's own share of a boot (the VM built,
    /// the kernel and initrd loaded, the jail entered).
    pub vcpus_started: Option<Duration>,
    /// VMM start to the guest's first console byte.
    pub first_output: Option<Duration>,
    /// VMM start to the boot signal.
    pub boot_signal: Option<Duration>,
    /// VMM start to now (when the VM ended, for a report at the end).
    pub total: Duration,
}

impl BootTimer {
    /// A timer counting from `start` (take it as early as possible: the VMM's start).
    pub fn new(start: Instant) -> Arc<Self> {
        Self::build(start, None)
    }

    /// A timer that also calls `hook` when the boot signal arrives (the VMM's events
    /// announce it live through this).
    pub fn with_signal_hook(start: Instant, hook: SignalHook) -> Arc<Self> {
        Self::build(start, Some(hook))
    }

    fn build(start: Instant, on_signal: Option<SignalHook>) -> Arc<Self> {
        Arc::new(BootTimer {
            start,
            vcpus_started: OnceLock::new(),
            first_output: OnceLock::new(),
            signal: OnceLock::new(),
            on_signal,
        })
    }

    /// Marks the boot signal; returns the time since start the first time (and calls the
    /// hook), `None` after.
    pub fn mark_signal(&self) -> Option<Duration> {
        let elapsed = self.start.elapsed();
        self.signal.set(elapsed).ok()?;
        if let Some(hook) = &self.on_signal {
            hook(elapsed);
        }
        Some(elapsed)
    }

    /// Marks the moment the VM is built and its vCPU threads start (the first call counts).
    pub fn mark_vcpus_started(&self) {
        let _ = self.vcpus_started.set(self.start.elapsed());
    }

    fn mark_first_output(&self) {
        if self.first_output.get().is_none() {
            let _ = self.first_output.set(self.start.elapsed());
        }
    }

    pub fn times(&self) -> BootTimes {
        BootTimes {
            vcpus_started: self.vcpus_started.get().copied(),
            first_output: self.first_output.get().copied(),
            boot_signal: self.signal.get().copied(),
            total: self.start.elapsed(),
        }
    }
}

impl std::fmt::Display for BootTimes {
    /// One line, `key=value` pairs in milliseconds, for scripts: `boot-timing:
    /// vcpus_started_ms=30.2 first_output_ms=84.1 boot_signal_ms=412.9 total_ms=530.0` (`-`
    /// when not seen).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_string(),
                |d| format!("{:.1}", d.as_secs_f64() * 1e3),
            )
        };
        write!(
            f,
            "boot-timing: vcpus_started_ms={} first_output_ms={} boot_signal_ms={} total_ms={}",
            ms(self.vcpus_started),
            ms(self.first_output),
            ms(self.boot_signal),
            ms(Some(self.total))
        )
    }
}

/// The boot-signal device on the MMIO bus.
#[derive(Debug)]
pub struct BootSignal {
    timer: Arc<BootTimer>,
}

impl BootSignal {
    pub fn new(timer: Arc<BootTimer>) -> Self {
        BootSignal { timer }
    }
}

impl BusDevice for BootSignal {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value_is_signal =
            data.first() == Some(&BOOT_SIGNAL_VALUE) && data.iter().skip(1).all(|&b| b == 0);
        if offset != 0 || !value_is_signal {
            tracing::debug!("boot signal: write of {data:02x?} at offset {offset:#x} ignored");
            return;
        }
        if let Some(elapsed) = self.timer.mark_signal() {
            tracing::info!(
                "guest boot signal {:.1} ms after VMM start",
                elapsed.as_secs_f64() * 1e3
            );
        }
    }
}

/// A console writer that marks the time of the guest's first byte.
pub struct TimedWriter<W: Write> {
    inner: W,
    timer: Arc<BootTimer>,
}

impl<W: Write> TimedWriter<W> {
    pub fn new(inner: W, timer: Arc<BootTimer>) -> Self {
        TimedWriter { inner, timer }
    }
}

impl<W: Write> Write for TimedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.timer.mark_first_output();
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_is_timed_and_later_ones_ignored() {
        let timer = BootTimer::new(Instant::now());
        let mut dev = BootSignal::new(timer.clone());
        assert_eq!(timer.times().boot_signal, None);
        dev.write(0, &[BOOT_SIGNAL_VALUE]);
        let first = timer.times().boot_signal.expect("signal recorded");
        std::thread::sleep(Duration::from_millis(2));
        dev.write(0, &[BOOT_SIGNAL_VALUE]);
        assert_eq!(timer.times().boot_signal, Some(first));
        assert!(timer.times().total >= first);
    }

    #[test]
    fn the_hook_hears_the_first_signal_once() {
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let h = heard.clone();
        let timer = BootTimer::with_signal_hook(
            Instant::now(),
            Box::new(move |d| h.lock().unwrap().push(d)),
        );
        let mut dev = BootSignal::new(timer.clone());
        dev.write(0, &[BOOT_SIGNAL_VALUE]);
        dev.write(0, &[BOOT_SIGNAL_VALUE]);
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard.len(), 1);
        assert_eq!(Some(heard[0]), timer.times().boot_signal);
    }

    #[test]
    fn other_values_offsets_and_widths_are_not_the_signal() {
        let timer = BootTimer::new(Instant::now());
        let mut dev = BootSignal::new(timer.clone());
        for (offset, data) in [
            (0, &[122u8][..]),
            (1, &[BOOT_SIGNAL_VALUE][..]),
            (0, &[BOOT_SIGNAL_VALUE, 1, 0, 0][..]),
            (0, &[][..]),
            (u64::MAX, &[BOOT_SIGNAL_VALUE][..]),
        ] {
            dev.write(offset, data);
        }
        assert_eq!(timer.times().boot_signal, None);
        // A 32-bit write of 123 is the signal too.
        dev.write(0, &u32::from(BOOT_SIGNAL_VALUE).to_le_bytes());
        assert!(timer.times().boot_signal.is_some());
        let mut buf = [0xffu8; 8];
        dev.read(0, &mut buf);
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn the_first_console_byte_is_timed() {
        let timer = BootTimer::new(Instant::now());
        let mut w = TimedWriter::new(Vec::new(), timer.clone());
        w.write_all(b"").unwrap();
        assert_eq!(timer.times().first_output, None);
        w.write_all(b"Linux version").unwrap();
        let first = timer.times().first_output.unwrap();
        w.write_all(b" more").unwrap();
        assert_eq!(timer.times().first_output, Some(first));
        assert_eq!(w.inner, b"Linux version more");
    }

    #[test]
    fn the_report_line_is_parseable() {
        let times = BootTimes {
            vcpus_started: Some(Duration::from_micros(30_240)),
            first_output: Some(Duration::from_micros(84_120)),
            boot_signal: None,
            total: Duration::from_millis(530),
        };
        assert_eq!(
            times.to_string(),
            "boot-timing: vcpus_started_ms=30.2 first_output_ms=84.1 boot_signal_ms=- \
             total_ms=530.0"
        );
    }
}
