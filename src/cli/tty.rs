//! What the verbs that run a process in the foreground share (`run`, `exec`, `vm
//! run-container`): the host terminal in raw mode, and signals forwarded to the process.

use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in the threads it starts) and
/// hands each one that arrives to `forward`, on a thread of its own. When `forward`
/// returns false (nothing to forward to yet), peapod exits with 128+N as the signal's
/// default action would.
pub fn forward_signals(forward: impl Fn(i32) -> bool + Send + 'static) -> Result<(), nix::Error> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set.thread_block()?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            if !forward(sig as i32) {
                std::process::exit(128 + sig as i32);
            }
        }
    });
    Ok(())
}

/// The host terminal in raw mode while it lives (keys go to the container's pty as typed).
pub struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    /// Raw mode on stdin's terminal; `None` when stdin is not a terminal.
    pub fn enter() -> Option<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

/// Serves an attached connection (after `Attached`) until the process ends: its output to
/// this process's stdout and stderr, this process's stdin to it (with `stdin`), the
/// terminal raw (with `tty` and `stdin` on a terminal), SIGINT/SIGTERM/SIGHUP forwarded.
/// Returns how the process ended.
pub fn attach_session(
    conn: std::os::unix::net::UnixStream,
    stdin: bool,
    tty: bool,
) -> anyhow::Result<crate::supervisor::api::ProcessEnd> {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    use anyhow::Context;

    use crate::supervisor::stream::{MAX_CHUNK, StreamError, StreamFrame};

    let writer = Arc::new(Mutex::new(
        conn.try_clone()
            .context("cannot clone the attached connection")?,
    ));
    let signals = Arc::clone(&writer);
    forward_signals(move |sig| {
        let mut w = signals.lock().unwrap_or_else(|e| e.into_inner());
        let _ = StreamFrame::Signal(sig).write_to(&mut *w);
        true
    })
    .context("cannot set up signal forwarding")?;
    let raw = (tty && stdin).then(RawTerminal::enter).flatten();
    if stdin {
        let input = Arc::clone(&writer);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_CHUNK];
            let mut from = std::io::stdin().lock();
            loop {
                let frame = match from.read(&mut buf) {
                    Ok(0) | Err(_) => StreamFrame::StdinClose,
                    Ok(n) => StreamFrame::Stdin(buf[..n].to_vec()),
                };
                let end = frame == StreamFrame::StdinClose;
                let mut w = input.lock().unwrap_or_else(|e| e.into_inner());
                if frame.write_to(&mut *w).is_err() || end {
                    return;
                }
            }
        });
    }
    let mut reader = conn;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let result = loop {
        match StreamFrame::read_from(&mut reader) {
            Ok(StreamFrame::Stdout(bytes)) => {
                let _ = out.write_all(&bytes).and_then(|_| out.flush());
            }
            Ok(StreamFrame::Stderr(bytes)) => {
                let _ = err.write_all(&bytes).and_then(|_| err.flush());
            }
            Ok(StreamFrame::Exit(end)) => break Ok(end),
            Ok(_) => {}
            Err(StreamError::Closed) => {
                break Err(anyhow::anyhow!(
                    "the pod's supervisor closed the connection before the process ended \
                     (see peapod ps -a and peapod logs)"
                ));
            }
            Err(e) => break Err(e.into()),
        }
    };
    drop(raw);
    result
}
