//! The legacy serial port (a 16550A UART, vm-superio's `Serial`) on the PIO bus: what the
//! guest writes to its transmit register goes to a host writer (stdout for `peapod vm hello`,
//! a buffer in tests).

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::bus::BusDevice;

/// Raises the UART's interrupt by writing to an eventfd; once the VM has an in-kernel irqchip,
/// the builder registers that eventfd as an irqfd for the port's IRQ line.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK)?))
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A UART on the PIO bus.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, W>,
    /// Whether a failed host write was already logged (log once, not once per byte).
    write_error_logged: bool,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(out: W) -> std::io::Result<Self> {
        Ok(SerialDevice {
            uart: Serial::new(EventFdTrigger::new()?, out),
            write_error_logged: false,
        })
    }

    /// The eventfd that signals the UART's interrupt.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.uart.interrupt_evt().eventfd()
    }

    /// The host writer (tests read what the guest printed from it).
    pub fn writer(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    /// A multi-byte access (string I/O such as `rep insb`) reads the register repeatedly.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match u8::try_from(offset) {
            Ok(reg) => data.iter_mut().for_each(|b| *b = self.uart.read(reg)),
            Err(_) => data.fill(0xff),
        }
    }

    /// A multi-byte access (string I/O such as `rep outsb`) writes the register once per byte.
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(reg) = u8::try_from(offset) else {
            return;
        };
        for &byte in data {
            if let Err(e) = self.uart.write(reg, byte)
                && !self.write_error_logged
            {
                self.write_error_logged = true;
                tracing::warn!("serial port output lost: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line status register, and its "transmitter empty" bits.
    const LSR: u64 = 5;
    const LSR_THR_EMPTY: u8 = 0x60;

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let mut serial = SerialDevice::new(Vec::new()).unwrap();
        for &b in b"hi\n" {
            serial.write(0, &[b]);
        }
        serial.write(0, b"rep");
        assert_eq!(serial.writer().as_slice(), b"hi\nrep");
    }

    #[test]
    fn the_line_status_says_ready_to_send() {
        let mut serial = SerialDevice::new(Vec::new()).unwrap();
        let mut lsr = [0u8];
        serial.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & LSR_THR_EMPTY, LSR_THR_EMPTY);
    }

    #[test]
    fn odd_offsets_and_lengths_do_not_panic() {
        let mut serial = SerialDevice::new(Vec::new()).unwrap();
        serial.write(1 << 40, &[1, 2, 3]);
        serial.write(7, &[]);
        let mut data = [0u8; 3];
        serial.read(1 << 40, &mut data);
        assert_eq!(data, [0xff; 3]);
        serial.read(200, &mut data);
        assert!(serial.writer().is_empty());
    }

    #[test]
    fn a_failing_writer_is_logged_not_fatal() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("closed"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut serial = SerialDevice::new(Broken).unwrap();
        serial.write(0, b"lost");
        assert!(serial.write_error_logged);
    }
}
