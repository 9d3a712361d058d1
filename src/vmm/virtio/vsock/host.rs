//! The host's side of hybrid vsock (Firecracker's protocol), for peapod itself and its tests.
//!
//! - Host → guest: connect to the device's Unix socket `UDS_PATH`, send `CONNECT <port>\n`,
//!   read `OK <host_port>\n`; what follows is a byte stream to the guest's listener on `<port>`.
//!   [`connect_to_guest`] does that, retrying while the VM or the guest's listener is not up yet.
//! - Guest → host: a guest connect to CID 2 port `P` becomes a connect to the Unix socket
//!   `UDS_PATH_P` ([`host_listener_path`]), where a host program listens.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest `OK <port>\n` line a device sends (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY_LINE: usize = 32;

/// Pause between attempts while the guest is not there yet.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "vsock: no guest listener on port {port} behind {uds} after {timeout:?} (last attempt: \
         {last}); is the VM running with --vsock {uds} and is something listening on port {port} \
         in the guest?"
    )]
    TimedOut {
        uds: PathBuf,
        port: u32,
        timeout: Duration,
        last: String,
    },
    #[error("vsock: cannot connect to {uds}: {source}")]
    Connect {
        uds: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock: {uds} answered `CONNECT {port}` with {reply:?}, not `OK <port>`")]
    BadReply {
        uds: PathBuf,
        port: u32,
        reply: String,
    },
    #[error("vsock: talking to {uds}: {source}")]
    Io {
        uds: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The Unix socket on which the host listens for guest connections to CID 2 port `port`:
/// `UDS_PATH_<port>`.
pub fn host_listener_path(uds: &Path, port: u32) -> PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// One attempt's outcome: done, worth another try, or hopeless.
enum Attempt {
    Connected(UnixStream),
    NotYet(String),
    Failed(ConnectError),
}

/// Connects to the guest's listener on vsock port `port` through the device's Unix socket
/// `uds`, and returns the stream after the `OK` line (blocking, no timeouts set).
///
/// Retries until `timeout` while `uds` does not exist or refuses connections (the VMM is not up
/// yet) and while the device closes the stream without an `OK` line (the guest reset the
/// connection: nothing listens on `port` yet, or the VM is still booting).
pub fn connect_to_guest(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match attempt(uds, port, deadline) {
            Attempt::Connected(stream) => return Ok(stream),
            Attempt::Failed(e) => return Err(e),
            Attempt::NotYet(why) => why,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(ConnectError::TimedOut {
                uds: uds.to_owned(),
                port,
                timeout,
                last,
            });
        }
        std::thread::sleep(RETRY_PAUSE.min(deadline - now));
    }
}

fn attempt(uds: &Path, port: u32, deadline: Instant) -> Attempt {
    let mut stream = match UnixStream::connect(uds) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::WouldBlock
            ) =>
        {
            return Attempt::NotYet(format!("connect: {e}"));
        }
        Err(source) => {
            return Attempt::Failed(ConnectError::Connect {
                uds: uds.to_owned(),
                source,
            });
        }
    };
    let io = |source| {
        Attempt::Failed(ConnectError::Io {
            uds: uds.to_owned(),
            source,
        })
    };
    if let Err(e) = stream.write_all(format!("CONNECT {port}\n").as_bytes()) {
        return match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                Attempt::NotYet(format!("sending CONNECT: {e}"))
            }
            _ => io(e),
        };
    }
    // Byte by byte, so that nothing the guest sends after the line is consumed here.
    let mut line = Vec::with_capacity(16);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Attempt::NotYet("no reply to CONNECT in time".to_owned());
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return io(e);
        }
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {
                return Attempt::NotYet(
                    "the device closed the stream (the guest reset the connection)".to_owned(),
                );
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_REPLY_LINE {
                    return bad_reply(uds, port, &line);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Attempt::NotYet("no reply to CONNECT in time".to_owned());
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return Attempt::NotYet(format!("waiting for OK: {e}"));
            }
            Err(e) => return io(e),
        }
    }
    let valid = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|p| p.parse::<u32>().is_ok());
    if !valid {
        return bad_reply(uds, port, &line);
    }
    if let Err(e) = stream.set_read_timeout(None) {
        return io(e);
    }
    Attempt::Connected(stream)
}

fn bad_reply(uds: &Path, port: u32, line: &[u8]) -> Attempt {
    Attempt::Failed(ConnectError::BadReply {
        uds: uds.to_owned(),
        port,
        reply: String::from_utf8_lossy(line).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    use super::*;

    fn read_connect_line(s: &UnixStream) -> String {
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn listener_paths_follow_firecracker() {
        assert_eq!(
            host_listener_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }

    #[test]
    fn waits_for_the_socket_and_for_a_listener() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let uds2 = uds.clone();
        let server = std::thread::spawn(move || {
            // The VM is not up at first.
            std::thread::sleep(Duration::from_millis(150));
            let listener = UnixListener::bind(&uds2).unwrap();
            // The first attempt: the guest resets it (nothing listens yet).
            let (s, _) = listener.accept().unwrap();
            assert_eq!(read_connect_line(&s), "CONNECT 1024\n");
            drop(s);
            // The second: the guest answers, and sends data right behind the OK line.
            let (mut s, _) = listener.accept().unwrap();
            assert_eq!(read_connect_line(&s), "CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nhello").unwrap();
            let mut echo = [0u8; 3];
            s.read_exact(&mut echo).unwrap();
            assert_eq!(&echo, b"abc");
        });
        let mut s = connect_to_guest(&uds, 1024, Duration::from_secs(10)).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        s.write_all(b"abc").unwrap();
        server.join().unwrap();
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("missing.sock");
        let start = Instant::now();
        let err = connect_to_guest(&uds, 5, Duration::from_millis(200)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(err, ConnectError::TimedOut { port: 5, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_garbage_reply_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            read_connect_line(&s);
            s.write_all(b"NOPE\n").unwrap();
        });
        let err = connect_to_guest(&uds, 5, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(err, ConnectError::BadReply { .. }), "{err}");
        server.join().unwrap();
    }
}
