//! A stub of the i8042 keyboard controller, for one job: Linux's `reboot=k` writes the reset
//! command (0xfe) to the command port, and that ends the VM as a clean reboot.
//!
//! It sits on the PIO bus at 0x60..=0x64 (data port at offset 0, command/status port at
//! offset 4; 0x61..=0x63 belong to other chips and read as ones here). It answers just enough
//! for Linux's i8042 driver to find a controller with no keyboard or mouse behind it, without
//! the driver's half-second timeouts:
//!
//! | command (port 0x64) | effect |
//! |---|---|
//! | 0x20 read controller configuration | the configuration byte is queued on port 0x60 |
//! | 0x60 write controller configuration | the next byte written to port 0x60 becomes it |
//! | 0xaa controller self-test | 0x55 (passed) is queued |
//! | 0xab keyboard interface test | 0x00 (no error) is queued |
//! | 0xd0 read output port | 0x03 (A20 on, not in reset) is queued |
//! | 0xd1 write output port | the next data byte is the output port; bit 0 clear resets the CPU |
//! | 0xfe pulse reset line | reset: the VM ends ([`GuestExit::Reboot`]) |
//! | anything else | ignored |
//!
//! Status (port 0x64 read): output buffer full when a byte is queued, the system flag, never
//! busy. Bytes written to port 0x60 outside a command go to "the keyboard", which is absent:
//! they are dropped and nothing answers, as with an unplugged keyboard.

use std::sync::Arc;

use crate::vmm::bus::BusDevice;
use crate::vmm::stop::{GuestExit, VmStop};

/// The bus window: ports 0x60 through 0x64.
pub const I8042_WINDOW: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Status bits.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
/// Status bit 3: the last write went to the command port.
const STATUS_COMMAND: u8 = 1 << 3;

/// Commands.
pub const CMD_READ_CONFIG: u8 = 0x20;
pub const CMD_WRITE_CONFIG: u8 = 0x60;
pub const CMD_SELF_TEST: u8 = 0xaa;
pub const CMD_KBD_TEST: u8 = 0xab;
pub const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
pub const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
pub const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
/// Output port: bit 0 is the CPU reset line (active low), bit 1 the A20 gate.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
/// Configuration at power-on: keyboard interrupt on, system flag, keyboard translation.
const CONFIG_DEFAULT: u8 = 0x45;

/// What a byte written to the data port means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Keyboard,
    Config,
    OutputPort,
}

/// The i8042 stub.
#[derive(Debug)]
pub struct I8042 {
    stop: Arc<VmStop>,
    config: u8,
    output: Option<u8>,
    pending: Pending,
    status_command: bool,
}

impl I8042 {
    /// A controller that ends the VM through `stop` when the guest resets the CPU.
    pub fn new(stop: Arc<VmStop>) -> Self {
        I8042 {
            stop,
            config: CONFIG_DEFAULT,
            output: None,
            pending: Pending::Keyboard,
            status_command: false,
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYSTEM_FLAG;
        if self.output.is_some() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.status_command {
            s |= STATUS_COMMAND;
        }
        s
    }

    fn reset(&self) {
        if self.stop.request(GuestExit::Reboot) {
            tracing::info!("guest reset the CPU through the i8042: ending the VM");
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status_command = true;
        self.pending = Pending::Keyboard;
        match cmd {
            CMD_READ_CONFIG => self.output = Some(self.config),
            CMD_WRITE_CONFIG => self.pending = Pending::Config,
            CMD_SELF_TEST => self.output = Some(SELF_TEST_PASSED),
            CMD_KBD_TEST => self.output = Some(0),
            CMD_READ_OUTPUT_PORT => self.output = Some(OUTPUT_PORT_DEFAULT),
            CMD_WRITE_OUTPUT_PORT => self.pending = Pending::OutputPort,
            CMD_RESET_CPU => self.reset(),
            other => tracing::debug!("i8042: command {other:#04x} ignored"),
        }
    }

    fn data(&mut self, byte: u8) {
        self.status_command = false;
        match std::mem::replace(&mut self.pending, Pending::Keyboard) {
            Pending::Config => self.config = byte,
            Pending::OutputPort if byte & 1 == 0 => self.reset(),
            Pending::OutputPort => {}
            Pending::Keyboard => tracing::debug!("i8042: byte {byte:#04x} to the absent keyboard"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            DATA_OFFSET => self.output.take().unwrap_or(0),
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
        // Wider or string reads: the rest reads as the port would on a second access.
        for b in data.iter_mut().skip(1) {
            *b = if offset == COMMAND_OFFSET {
                self.status()
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for &byte in data {
            match offset {
                DATA_OFFSET => self.data(byte),
                COMMAND_OFFSET => self.command(byte),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i8042() -> (I8042, Arc<VmStop>) {
        let stop = VmStop::new();
        (I8042::new(stop.clone()), stop)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn the_reset_command_ends_the_vm_as_a_reboot() {
        let (mut dev, stop) = i8042();
        // Linux's reboot path waits for the input buffer to drain first.
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & 0x2, 0, "never busy");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(stop.reason(), Some(GuestExit::Reboot));
        // Again (Linux tries ten times): still one reason.
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(stop.reason(), Some(GuestExit::Reboot));
    }

    #[test]
    fn pulling_the_reset_line_through_the_output_port_also_reboots() {
        let (mut dev, stop) = i8042();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x03]);
        assert!(!stop.is_requested(), "bit 0 set: not a reset");
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x02]);
        assert_eq!(stop.reason(), Some(GuestExit::Reboot));
    }

    #[test]
    fn the_driver_probe_gets_answers() {
        let (mut dev, stop) = i8042();
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CONFIG]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), CONFIG_DEFAULT);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CONFIG]);
        dev.write(DATA_OFFSET, &[0x30]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CONFIG]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x30);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x55);
        dev.write(COMMAND_OFFSET, &[CMD_READ_OUTPUT_PORT]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x03);
        // Keyboard bytes vanish; unknown commands are ignored.
        dev.write(DATA_OFFSET, &[0xff]);
        dev.write(COMMAND_OFFSET, &[0xa7, 0xad]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert!(!stop.is_requested());
    }

    #[test]
    fn odd_ports_and_lengths_do_not_panic() {
        let (mut dev, stop) = i8042();
        dev.read(1, &mut [0u8; 4]);
        dev.read(COMMAND_OFFSET, &mut []);
        dev.write(2, &[CMD_RESET_CPU]);
        dev.write(1 << 40, &[1, 2, 3]);
        dev.write(COMMAND_OFFSET, &[]);
        let mut wide = [0u8; 2];
        dev.read(COMMAND_OFFSET, &mut wide);
        assert_eq!(wide[0], wide[1]);
        assert_eq!(read(&mut dev, 2), 0xff);
        assert!(
            !stop.is_requested(),
            "a reset byte on another port is no reset"
        );
        // A string write that ends in the reset command still resets.
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST, CMD_RESET_CPU]);
        assert!(stop.is_requested());
    }
}
