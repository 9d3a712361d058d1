//! The built-in guest: a few bytes of 64-bit machine code that write a message to a serial
//! port one byte at a time and halt. It proves the whole path (KVM, memory, long-mode entry,
//! vCPU exits, PIO bus, serial device) without a kernel.

/// What `peapod vm hello` prints.
pub const MESSAGE: &[u8] = b"hello from a peapod guest\n";

/// The code before the message; `program` appends the NUL-terminated message.
///
/// ```text
///  0: 66 ba PP PP            mov   dx, PORT
///  4: 48 8d 35 0b 00 00 00   lea   rsi, [rip + 11]     ; the message, at offset 22
/// 11: ac                     lodsb                     ; al = [rsi++]
/// 12: 84 c0                  test  al, al
/// 14: 74 03                  jz    19                  ; NUL: done
/// 16: ee                     out   dx, al
/// 17: eb f8                  jmp   11
/// 19: f4                     hlt
/// 20: eb fd                  jmp   19                  ; halt again if resumed
/// 22: message bytes, 00
/// ```
const CODE: [u8; 22] = [
    0x66, 0xba, 0x00, 0x00, // mov dx, imm16 (patched)
    0x48, 0x8d, 0x35, 0x0b, 0x00, 0x00, 0x00, // lea rsi, [rip + 11]
    0xac, // lodsb
    0x84, 0xc0, // test al, al
    0x74, 0x03, // jz +3
    0xee, // out dx, al
    0xeb, 0xf8, // jmp -8
    0xf4, // hlt
    0xeb, 0xfd, // jmp -3
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error(
        "the guest message contains a NUL byte at {0}: the guest stops at NUL, so the message would be cut short"
    )]
    NulInMessage(usize),
}

/// The guest program: position-independent code that writes `message` to `port` and halts.
/// Load it anywhere in identity-mapped memory and start a long-mode vCPU at its first byte.
pub fn program(port: u16, message: &[u8]) -> Result<Vec<u8>, HelloError> {
    if let Some(at) = message.iter().position(|&b| b == 0) {
        return Err(HelloError::NulInMessage(at));
    }
    let mut code = Vec::with_capacity(CODE.len() + message.len() + 1);
    code.extend_from_slice(&CODE);
    code[2..4].copy_from_slice(&port.to_le_bytes());
    code.extend_from_slice(message);
    code.push(0);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the handful of instructions `program` uses, as a CPU in 64-bit mode would, and
    /// returns the `(port, byte)` pairs written and where it halted.
    fn interpret(code: &[u8], base: u64) -> (Vec<(u16, u8)>, u64) {
        let (mut rip, mut rsi, mut dx, mut al, mut zf) = (base, 0u64, 0u16, 0u8, false);
        let mut out = Vec::new();
        let at = |addr: u64| code[(addr - base) as usize];
        let rel8 = |addr: u64| i64::from(at(addr) as i8);
        for _ in 0..10_000 {
            match at(rip) {
                0x66 if at(rip + 1) == 0xba => {
                    dx = u16::from_le_bytes([at(rip + 2), at(rip + 3)]);
                    rip += 4;
                }
                0x48 if at(rip + 1) == 0x8d && at(rip + 2) == 0x35 => {
                    let disp =
                        i32::from_le_bytes([at(rip + 3), at(rip + 4), at(rip + 5), at(rip + 6)]);
                    rip += 7;
                    rsi = rip.wrapping_add_signed(i64::from(disp));
                }
                0xac => {
                    al = at(rsi);
                    rsi += 1;
                    rip += 1;
                }
                0x84 if at(rip + 1) == 0xc0 => {
                    zf = al == 0;
                    rip += 2;
                }
                0x74 => rip = (rip + 2).wrapping_add_signed(if zf { rel8(rip + 1) } else { 0 }),
                0xee => {
                    out.push((dx, al));
                    rip += 1;
                }
                0xeb => rip = (rip + 2).wrapping_add_signed(rel8(rip + 1)),
                0xf4 => return (out, rip),
                op => panic!("unexpected opcode {op:#x} at {rip:#x}"),
            }
        }
        panic!("the program did not halt");
    }

    #[test]
    fn the_program_writes_the_message_to_the_port_and_halts() {
        let base = 0x10_0000;
        let code = program(0x3f8, MESSAGE).unwrap();
        let (out, halted_at) = interpret(&code, base);
        let bytes: Vec<u8> = out.iter().map(|&(_, b)| b).collect();
        assert_eq!(bytes, MESSAGE);
        assert!(out.iter().all(|&(port, _)| port == 0x3f8));
        assert_eq!(halted_at, base + 19);
    }

    #[test]
    fn the_bytes_are_the_documented_ones() {
        let code = program(0x2f8, b"A").unwrap();
        assert_eq!(&code[..4], &[0x66, 0xba, 0xf8, 0x02]);
        assert_eq!(&code[CODE.len()..], b"A\0");
        // `lea` points 11 bytes past its own end (offset 11), at the message.
        assert_eq!(11 + 11, CODE.len());
        assert_eq!(code[19], 0xf4);
    }

    #[test]
    fn any_port_and_an_empty_message_work() {
        let code = program(0x80, b"").unwrap();
        let (out, _) = interpret(&code, 0);
        assert!(out.is_empty());
        let (out, _) = interpret(&program(0xe9, b"xy").unwrap(), 0x2000);
        assert_eq!(out, vec![(0xe9, b'x'), (0xe9, b'y')]);
    }

    #[test]
    fn a_nul_in_the_message_is_refused() {
        assert_eq!(program(0x3f8, b"ab\0c"), Err(HelloError::NulInMessage(2)));
    }
}
