//! `peapod-netbench`: the small TCP tool that `peapod bench net` runs on both ends of a link
//! (the host and a pod VM; two network namespaces joined by a veth pair). Std networking
//! only, and only numeric `IP:PORT` addresses: it is built as a static glibc binary for the
//! pod's busybox image (`scripts/build-guest-bins peapod-netbench`), where name resolution
//! would need glibc's NSS modules that a static binary cannot load.
//!
//! ```text
//! peapod-netbench server [--port P]
//! peapod-netbench client --addr IP:P --mode stream [--seconds S]
//! peapod-netbench client --addr IP:P --mode rr [--count N] [--size B]
//! ```
//!
//! The protocol: a connection starts with one mode byte.
//! - `S` (stream): the client writes for S seconds and shuts down its write side; the
//!   server reads to EOF and answers with the number of bytes it read (8 bytes, big endian).
//!   The client times from its first write to that answer, so the bytes still in flight
//!   when the time is up are counted in both.
//! - `R` (request/response): a 4-byte big-endian message size follows, then the client sends
//!   one message of that size at a time and the server echoes each back, until EOF. The
//!   client times each round trip (after [`RR_WARMUP`] uncounted ones).
//!
//! The client prints one JSON line ([`Report`]); errors go to stderr with exit status 1
//! (2 for a bad command line).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The server's default port (iperf3's).
pub const DEFAULT_PORT: u16 = 5201;
/// The largest request/response message a server takes (and a client sends).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Round trips before the counted ones (connection warm-up: slow start, cold caches).
pub const RR_WARMUP: usize = 10;
const MODE_STREAM: u8 = b'S';
const MODE_RR: u8 = b'R';
/// Bytes per write or read of a stream.
const STREAM_CHUNK: usize = 128 * 1024;
/// How long a client keeps trying to connect: a pod's server may still be starting.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
const CONNECT_RETRY: Duration = Duration::from_millis(100);
/// The longest a client waits on one read or write, so that a stuck peer fails the run
/// instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest stream a client runs.
const MAX_SECONDS: f64 = 3600.0;

const USAGE: &str = "usage: peapod-netbench server [--port P]\n       \
                     peapod-netbench client --addr IP:P --mode stream [--seconds S]\n       \
                     peapod-netbench client --addr IP:P --mode rr [--count N] [--size B]";

#[derive(Debug, thiserror::Error)]
pub enum NetperfError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("cannot listen on port {port}: {source} (is another server on it?)")]
    Listen { port: u16, source: io::Error },
    #[error(
        "cannot connect to {addr} within {waited:?}: {source} (is the server running there, \
         and is {addr} reachable from this network namespace?)"
    )]
    Connect {
        addr: SocketAddr,
        waited: Duration,
        source: io::Error,
    },
    #[error("{what} with {addr}: {source}")]
    Io {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("the server at {addr} counted {counted} bytes of the stream, but {sent} were sent")]
    Miscount {
        addr: SocketAddr,
        sent: u64,
        counted: u64,
    },
    #[error("the server at {addr} echoed other bytes than round trip {round} sent")]
    BadEcho { addr: SocketAddr, round: usize },
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    Server {
        port: u16,
    },
    Stream {
        addr: SocketAddr,
        duration: Duration,
    },
    RequestResponse {
        addr: SocketAddr,
        count: usize,
        size: usize,
    },
}

/// One client's result, printed as one JSON line: `{"mode":"stream",...}` or
/// `{"mode":"rr",...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", deny_unknown_fields)]
pub enum Report {
    #[serde(rename = "stream")]
    Stream {
        /// Bytes the server counted (the same as the client sent).
        bytes: u64,
        /// First write to the server's count.
        seconds: f64,
        gbit_per_s: f64,
    },
    #[serde(rename = "rr")]
    RequestResponse {
        /// Counted round trips.
        count: u64,
        p50_us: f64,
        p99_us: f64,
        mean_us: f64,
    },
}

impl Invocation {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> Result<Self, NetperfError> {
        let usage = |msg: String| NetperfError::Usage(msg);
        let (command, rest) = args
            .split_first()
            .ok_or_else(|| usage("no command: server or client".into()))?;
        let mut flags = std::collections::BTreeMap::new();
        let mut it = rest.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| usage(format!("unexpected argument {flag:?}")))?;
            let value = it
                .next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))?;
            if flags.insert(name, value.as_str()).is_some() {
                return Err(usage(format!("{flag} given twice")));
            }
        }
        let allowed: &[&str] = match command.as_str() {
            "server" => &["port"],
            "client" => &["addr", "mode", "seconds", "count", "size"],
            other => return Err(usage(format!("unknown command {other:?}"))),
        };
        if let Some(extra) = flags.keys().find(|k| !allowed.contains(k)) {
            return Err(usage(format!("{command} takes no --{extra}")));
        }
        fn number<T: std::str::FromStr>(
            flags: &std::collections::BTreeMap<&str, &str>,
            name: &str,
            default: T,
        ) -> Result<T, NetperfError> {
            match flags.get(name) {
                None => Ok(default),
                Some(text) => text
                    .parse()
                    .map_err(|_| NetperfError::Usage(format!("--{name} {text:?} is not a number"))),
            }
        }
        if command == "server" {
            return Ok(Invocation::Server {
                port: number(&flags, "port", DEFAULT_PORT)?,
            });
        }
        let addr_text = flags
            .get("addr")
            .ok_or_else(|| usage("client needs --addr IP:PORT".into()))?;
        let addr: SocketAddr = addr_text.parse().map_err(|_| {
            usage(format!(
                "--addr {addr_text:?} is not IP:PORT (host names are not resolved)"
            ))
        })?;
        match flags.get("mode").copied() {
            Some("stream") => {
                if flags.contains_key("count") || flags.contains_key("size") {
                    return Err(usage("--count and --size are for --mode rr".into()));
                }
                let seconds: f64 = number(&flags, "seconds", 10.0)?;
                if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
                    return Err(usage(format!(
                        "--seconds {seconds} is out of range (more than 0, at most {MAX_SECONDS})"
                    )));
                }
                Ok(Invocation::Stream {
                    addr,
                    duration: Duration::from_secs_f64(seconds),
                })
            }
            Some("rr") => {
                if flags.contains_key("seconds") {
                    return Err(usage("--seconds is for --mode stream".into()));
                }
                let count: usize = number(&flags, "count", 10_000)?;
                let size: usize = number(&flags, "size", 1)?;
                if count == 0 {
                    return Err(usage("--count must be at least 1".into()));
                }
                if !(1..=MAX_MESSAGE).contains(&size) {
                    return Err(usage(format!(
                        "--size {size} is out of range (1 to {MAX_MESSAGE} bytes)"
                    )));
                }
                Ok(Invocation::RequestResponse { addr, count, size })
            }
            Some(other) => Err(usage(format!("--mode {other:?}: expected stream or rr"))),
            None => Err(usage("client needs --mode stream or --mode rr".into())),
        }
    }
}

/// Runs what the command line asked for: a server (forever), or a client whose report is
/// printed as one JSON line on stdout.
pub fn run(invocation: Invocation) -> Result<(), NetperfError> {
    let report = match invocation {
        Invocation::Server { port } => {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .map_err(|source| NetperfError::Listen { port, source })?;
            eprintln!("peapod-netbench: listening on 0.0.0.0:{port}");
            serve(listener)
        }
        Invocation::Stream { addr, duration } => stream(addr, duration)?,
        Invocation::RequestResponse { addr, count, size } => request_response(addr, count, size)?,
    };
    let line = serde_json::to_string(&report).expect("a report serializes");
    println!("{line}");
    Ok(())
}

/// Accepts connections forever, each served on a thread of its own; a failed connection
/// is reported on stderr and does not stop the server.
pub fn serve(listener: TcpListener) -> ! {
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                std::thread::spawn(move || {
                    if let Err(e) = serve_connection(conn) {
                        eprintln!("peapod-netbench: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                // out of fds or a reset before accept: wait a little rather than spin
                eprintln!("peapod-netbench: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Serves one connection after reading its mode byte (see the module's protocol).
pub fn serve_connection(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    conn.read_exact(&mut mode)?;
    match mode[0] {
        MODE_STREAM => {
            let mut buf = vec![0u8; STREAM_CHUNK];
            let mut counted: u64 = 0;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => counted += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            conn.write_all(&counted.to_be_bytes())
        }
        MODE_RR => {
            let mut size = [0u8; 4];
            conn.read_exact(&mut size)?;
            let size = u32::from_be_bytes(size) as usize;
            if !(1..=MAX_MESSAGE).contains(&size) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("request/response size {size} is not 1 to {MAX_MESSAGE} bytes"),
                ));
            }
            let mut message = vec![0u8; size];
            loop {
                if !read_message(&mut conn, &mut message)? {
                    return Ok(());
                }
                conn.write_all(&message)?;
            }
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown mode byte {other:#04x} (expected 'S' or 'R')"),
        )),
    }
}

/// Fills `buf`; false on EOF before its first byte (the client is done), an error on EOF
/// within it.
fn read_message(conn: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match conn.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Connects to `addr`, trying again for up to `patience` while it is refused or
/// unreachable; with no Nagle delay and [`IO_TIMEOUT`] on reads and writes.
pub fn connect_retrying(addr: SocketAddr, patience: Duration) -> Result<TcpStream, NetperfError> {
    let started = Instant::now();
    let conn = loop {
        let left = patience.saturating_sub(started.elapsed());
        match TcpStream::connect_timeout(&addr, left.clamp(CONNECT_RETRY, Duration::from_secs(2))) {
            Ok(conn) => break conn,
            Err(source) if started.elapsed() >= patience => {
                return Err(NetperfError::Connect {
                    addr,
                    waited: started.elapsed(),
                    source,
                });
            }
            Err(_) => std::thread::sleep(CONNECT_RETRY),
        }
    };
    let io = |source| NetperfError::Io {
        what: "setting up the connection",
        addr,
        source,
    };
    conn.set_nodelay(true).map_err(io)?;
    conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    Ok(conn)
}

/// A stream of `duration` to the server at `addr`: how many bytes it counted, and how fast.
pub fn stream(addr: SocketAddr, duration: Duration) -> Result<Report, NetperfError> {
    let mut conn = connect_retrying(addr, CONNECT_PATIENCE)?;
    let io = |what| move |source| NetperfError::Io { what, addr, source };
    conn.write_all(&[MODE_STREAM])
        .map_err(io("sending the mode"))?;
    let chunk = vec![0x5au8; STREAM_CHUNK];
    let started = Instant::now();
    let mut sent: u64 = 0;
    while started.elapsed() < duration {
        match conn.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("streaming")(e)),
        }
    }
    conn.shutdown(Shutdown::Write)
        .map_err(io("ending the stream"))?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count)
        .map_err(io("reading the server's count"))?;
    let seconds = started.elapsed().as_secs_f64();
    let counted = u64::from_be_bytes(count);
    if counted != sent {
        return Err(NetperfError::Miscount {
            addr,
            sent,
            counted,
        });
    }
    Ok(Report::Stream {
        bytes: counted,
        seconds,
        gbit_per_s: counted as f64 * 8.0 / seconds / 1e9,
    })
}

/// `count` round trips of `size`-byte messages to the server at `addr` (after
/// [`RR_WARMUP`] uncounted ones), each checked to come back unchanged.
pub fn request_response(
    addr: SocketAddr,
    count: usize,
    size: usize,
) -> Result<Report, NetperfError> {
    let mut conn = connect_retrying(addr, CONNECT_PATIENCE)?;
    let io = |what| move |source| NetperfError::Io { what, addr, source };
    let size_u32 = u32::try_from(size.clamp(1, MAX_MESSAGE)).unwrap_or(1);
    let mut hello = vec![MODE_RR];
    hello.extend_from_slice(&size_u32.to_be_bytes());
    conn.write_all(&hello).map_err(io("sending the mode"))?;
    let size = size_u32 as usize;
    let mut message: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut echo = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    for round in 0..RR_WARMUP + count {
        // a different first byte each round, so that a stale echo does not pass
        message[0] = round as u8;
        let started = Instant::now();
        conn.write_all(&message).map_err(io("sending a request"))?;
        conn.read_exact(&mut echo)
            .map_err(io("reading a response"))?;
        let took = started.elapsed();
        if echo != message {
            return Err(NetperfError::BadEcho { addr, round });
        }
        if round >= RR_WARMUP {
            samples.push(took);
        }
    }
    // EOF for the server's loop; it may already be gone, so a failure here does not count
    let _ = conn.shutdown(Shutdown::Write);
    Ok(rr_report(samples))
}

/// The report of some round trips: their count, median, 99th percentile and mean.
pub fn rr_report(mut samples: Vec<Duration>) -> Report {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let total: Duration = samples.iter().sum();
    Report::RequestResponse {
        count: samples.len() as u64,
        p50_us: us(percentile(&samples, 50.0)),
        p99_us: us(percentile(&samples, 99.0)),
        mean_us: if samples.is_empty() {
            0.0
        } else {
            us(total) / samples.len() as f64
        },
    }
}

/// The nearest-rank percentile `pct` (0 to 100) of sorted samples; zero for none.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    /// A server on an ephemeral port of 127.0.0.1, serving on a thread until the test ends.
    fn local_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener));
        addr
    }

    #[test]
    fn the_command_line_is_parsed_and_checked() {
        assert_eq!(
            Invocation::parse(&args("server --port 7000")).unwrap(),
            Invocation::Server { port: 7000 }
        );
        assert_eq!(
            Invocation::parse(&args("server")).unwrap(),
            Invocation::Server { port: DEFAULT_PORT }
        );
        assert_eq!(
            Invocation::parse(&args(
                "client --addr 10.88.0.5:5201 --mode stream --seconds 2.5"
            ))
            .unwrap(),
            Invocation::Stream {
                addr: "10.88.0.5:5201".parse().unwrap(),
                duration: Duration::from_millis(2500),
            }
        );
        assert_eq!(
            Invocation::parse(&args(
                "client --mode rr --count 50 --size 1 --addr 127.0.0.1:1"
            ))
            .unwrap(),
            Invocation::RequestResponse {
                addr: "127.0.0.1:1".parse().unwrap(),
                count: 50,
                size: 1,
            }
        );
        for bad in [
            "",
            "serve",
            "server --port",
            "server --port x",
            "server --addr 1.2.3.4:5",
            "client --mode stream",
            "client --addr localhost:5201 --mode stream",
            "client --addr 1.2.3.4:5 --mode udp",
            "client --addr 1.2.3.4:5",
            "client --addr 1.2.3.4:5 --mode stream --seconds 0",
            "client --addr 1.2.3.4:5 --mode stream --seconds NaN",
            "client --addr 1.2.3.4:5 --mode stream --count 3",
            "client --addr 1.2.3.4:5 --mode rr --count 0",
            "client --addr 1.2.3.4:5 --mode rr --size 0",
            "client --addr 1.2.3.4:5 --mode rr --size 65537",
            "client --addr 1.2.3.4:5 --mode rr --seconds 1",
            "client --addr 1.2.3.4:5 --addr 1.2.3.4:6 --mode rr",
            "client extra --addr 1.2.3.4:5 --mode rr",
        ] {
            let err = Invocation::parse(&args(bad)).expect_err(bad);
            assert!(matches!(err, NetperfError::Usage(_)), "{bad}: {err}");
            assert!(err.to_string().contains("usage:"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_stream_is_counted_to_the_byte() {
        let addr = local_server();
        let Report::Stream {
            bytes,
            seconds,
            gbit_per_s,
        } = stream(addr, Duration::from_millis(200)).unwrap()
        else {
            panic!("not a stream report");
        };
        // stream() itself fails with Miscount unless the server's count equals what was sent
        assert!(bytes > 0);
        assert!(seconds >= 0.2, "{seconds}");
        let expected = bytes as f64 * 8.0 / seconds / 1e9;
        assert!((gbit_per_s - expected).abs() < 1e-9);
    }

    #[test]
    fn the_server_counts_exactly_what_a_raw_client_sends() {
        let addr = local_server();
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"S").unwrap();
        let payload = vec![7u8; 300_001];
        conn.write_all(&payload).unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        conn.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_be_bytes(count), 300_001);
    }

    #[test]
    fn request_response_echoes_each_message() {
        let addr = local_server();
        let Report::RequestResponse {
            count,
            p50_us,
            p99_us,
            mean_us,
        } = request_response(addr, 200, 1).unwrap()
        else {
            panic!("not an rr report");
        };
        assert_eq!(count, 200);
        assert!(0.0 < p50_us && p50_us <= p99_us, "{p50_us} {p99_us}");
        assert!(mean_us > 0.0);
        // larger messages, checked byte for byte by request_response
        assert!(request_response(addr, 5, 4096).is_ok());

        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"R\0\0\0\x03abc").unwrap();
        let mut back = [0u8; 3];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"abc");
        conn.write_all(b"xyz").unwrap();
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"xyz");
    }

    #[test]
    fn the_server_refuses_bad_modes_and_sizes() {
        let addr = local_server();
        for hello in [&b"X"[..], b"R\0\0\0\0", b"R\x7f\xff\xff\xff"] {
            let mut conn = TcpStream::connect(addr).unwrap();
            conn.write_all(hello).unwrap();
            // the server drops the connection: EOF, no echo, no allocation of 2 GiB
            let mut rest = Vec::new();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = conn.read_to_end(&mut rest);
            assert!(rest.is_empty(), "{hello:?}");
        }
        // and still serves the next connection
        assert!(request_response(addr, 3, 1).is_ok());
    }

    #[test]
    fn a_connect_to_nothing_gives_up_after_its_patience() {
        // a port that was free a moment ago: refused at once, retried until the patience ends
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let started = Instant::now();
        let err = connect_retrying(addr, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(err, NetperfError::Connect { .. }), "{err}");
    }

    #[test]
    fn a_client_waits_for_a_server_that_starts_late() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            serve(TcpListener::bind(addr).unwrap())
        });
        assert!(request_response(addr, 3, 1).is_ok());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let us = Duration::from_micros;
        let samples: Vec<Duration> = (1..=100).map(us).collect();
        assert_eq!(percentile(&samples, 50.0), us(50));
        assert_eq!(percentile(&samples, 99.0), us(99));
        assert_eq!(percentile(&samples, 100.0), us(100));
        assert_eq!(percentile(&samples, 0.0), us(1));
        assert_eq!(percentile(&[us(7)], 99.0), us(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn reports_are_one_json_line_and_read_back_strictly() {
        let report = rr_report(vec![
            Duration::from_micros(30),
            Duration::from_micros(10),
            Duration::from_micros(20),
        ]);
        assert_eq!(
            report,
            Report::RequestResponse {
                count: 3,
                p50_us: 20.0,
                p99_us: 30.0,
                mean_us: 20.0,
            }
        );
        let line = serde_json::to_string(&report).unwrap();
        assert_eq!(
            line,
            r#"{"mode":"rr","count":3,"p50_us":20.0,"p99_us":30.0,"mean_us":20.0}"#
        );
        assert_eq!(serde_json::from_str::<Report>(&line).unwrap(), report);
        let stream = r#"{"mode":"stream","bytes":10,"seconds":1.0,"gbit_per_s":8e-8}"#;
        assert!(matches!(
            serde_json::from_str::<Report>(stream).unwrap(),
            Report::Stream { bytes: 10, .. }
        ));
        let extra = r#"{"mode":"stream","bytes":1,"seconds":1.0,"gbit_per_s":1.0,"x":1}"#;
        assert!(serde_json::from_str::<Report>(extra).is_err());
        assert_eq!(
            rr_report(Vec::new()),
            Report::RequestResponse {
                count: 0,
                p50_us: 0.0,
                p99_us: 0.0,
                mean_us: 0.0
            }
        );
    }
}
