//! A static guest-side vsock probe for peapod's end-to-end tests (built with
//! `scripts/build-guest-bins peapod-vsock-probe`, put into the test initramfs).
//!
//! ```text
//! peapod-vsock-probe listen PORT [COUNT]   echo server: each connection gets back what it
//!                                          sends, until it shuts down its side; exits after
//!                                          COUNT connections (default: never)
//! peapod-vsock-probe send CID PORT TEXT    connects, writes TEXT, shuts down its write side,
//!                                          prints `PEAPOD_VSOCK_REPLY <reply>` with all it
//!                                          read back
//! ```
//!
//! Lines it prints start with `PEAPOD_VSOCK_` so that a test can find them on the console.
//! Exit status 0 on success, 1 with a message on stderr otherwise.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept, bind, connect, listen, socket,
};

/// `VMADDR_CID_ANY`.
const CID_ANY: u32 = u32::MAX;
/// How long `send` keeps trying while nothing listens on the host side yet.
const CONNECT_TRIES: u32 = 100;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["listen", port] => parse(port).and_then(|p| listen_echo(p, None)),
        ["listen", port, count] => {
            parse(port).and_then(|p| parse(count).and_then(|c| listen_echo(p, Some(c))))
        }
        ["send", cid, port, text] => {
            parse(cid).and_then(|c| parse(port).and_then(|p| send(c, p, text)))
        }
        _ => Err("usage: peapod-vsock-probe listen PORT [COUNT] | send CID PORT TEXT".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peapod-vsock-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(s: &str) -> Result<u32, String> {
    s.parse().map_err(|_| format!("`{s}` is not a number"))
}

fn stream_socket() -> Result<OwnedFd, String> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("cannot create a vsock socket: {e} (is /dev/vsock there?)"))
}

fn listen_echo(port: u32, count: Option<u32>) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let fd = stream_socket()?;
    bind(fd.as_raw_fd(), &VsockAddr::new(CID_ANY, port))
        .map_err(|e| format!("cannot bind vsock port {port}: {e}"))?;
    listen(&fd, Backlog::new(16).map_err(|e| e.to_string())?)
        .map_err(|e| format!("cannot listen on vsock port {port}: {e}"))?;
    println!("PEAPOD_VSOCK_LISTENING {port}");
    let _ = std::io::stdout().flush();
    let mut served = 0;
    while count.is_none_or(|c| served < c) {
        let conn = accept(&fd).map_err(|e| format!("accept: {e}"))?;
        let mut stream = std::fs::File::from(conn);
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    stream
                        .write_all(&buf[..n])
                        .map_err(|e| format!("echo write: {e}"))?;
                    total += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("echo read: {e}")),
            }
        }
        println!("PEAPOD_VSOCK_ECHOED {total}");
        let _ = std::io::stdout().flush();
        served += 1;
    }
    Ok(())
}

fn send(cid: u32, port: u32, text: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut last = String::new();
    for _ in 0..CONNECT_TRIES {
        let fd = stream_socket()?;
        match connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)) {
            Ok(()) => {
                let mut stream = std::fs::File::from(fd);
                stream
                    .write_all(text.as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                let mut reply = Vec::new();
                stream
                    .read_to_end(&mut reply)
                    .map_err(|e| format!("read: {e}"))?;
                println!("PEAPOD_VSOCK_REPLY {}", String::from_utf8_lossy(&reply));
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("cannot connect to CID {cid} port {port}: {last}"))
}
