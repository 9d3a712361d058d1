//! The host side of the protocol: a typed client over any byte stream (a vsock connection
//! to the agent in production, a `UnixStream` in tests).
//!
//! [`Client::handshake`] sends [`Request::Hello`] and checks the agent's version before
//! anything else is said; each method then sends one request and turns the one response into
//! a typed result. An agent error arrives as [`ClientError::Agent`] with the request it
//! answered; a response of the wrong kind (a buggy or hostile agent) is
//! [`ClientError::Unexpected`], never a panic.
//!
//! Every request but `wait` (which lasts as long as the process) is bounded: each read and
//! write of it waits at most the client's timeout ([`DEFAULT_TIMEOUT`] unless
//! [`Client::set_timeout`] says otherwise), so an agent that accepts and never answers fails
//! the request instead of hanging pod start or shutdown. A connection on which a request failed
//! midway is not used again: a late answer would be taken for the next request's.
//!
//! stdio streams are separate connections: [`attach_stream`] sends the [`StreamHello`] on a
//! fresh connection to [`super::STDIO_PORT`] and checks the answer; the caller then copies
//! raw bytes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::PROTOCOL_VERSION;
use super::frame::{FrameError, read_frame, write_frame};
use super::message::{
    ContainerSpec, ContainerStats, ErrorKind, ExitStatus, ProcessRef, ProcessSpec, Request,
    Response, SandboxSpec, StreamHello, StreamKind, WireError,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the guest agent speaks protocol version {agent} and this peapod speaks {host}: \
         rebuild the agent initramfs (rootfs/build-agent-initramfs.sh) with this peapod"
    )]
    VersionMismatch { agent: u32, host: u32 },
    #[error("the agent refused {request}: {error}")]
    Agent {
        request: &'static str,
        #[source]
        error: WireError,
    },
    #[error("the agent answered {request} with an unexpected {response}")]
    Unexpected {
        request: &'static str,
        response: String,
    },
    #[error("{request}: {source}")]
    Frame {
        request: &'static str,
        #[source]
        source: FrameError,
    },
    #[error("{request}: the control connection broke when {earlier} failed; open a new one")]
    Broken {
        request: &'static str,
        earlier: &'static str,
    },
}

/// How long one read or write of a request may wait for the agent, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream whose reads and writes can be bounded in time.
pub trait Timeouts {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Timeouts for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
}

impl ClientError {
    /// The agent's error kind, when the agent refused the request.
    pub fn wire_kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Agent { error, .. } => Some(error.kind),
            _ => None,
        }
    }
}

/// A handshaken control connection to the agent.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    agent: String,
    timeout: Option<Duration>,
    /// The request that failed midway, leaving the stream out of step.
    broken: Option<&'static str>,
}

impl<S: Read + Write + Timeouts> Client<S> {
    /// Says hello and checks that the agent speaks [`PROTOCOL_VERSION`], waiting at most
    /// [`DEFAULT_TIMEOUT`] for each read and write.
    pub fn handshake(stream: S) -> Result<Self, ClientError> {
        Self::handshake_within(stream, DEFAULT_TIMEOUT)
    }

    /// [`Client::handshake`] waiting at most `first` for the agent's answer (an agent that
    /// is still starting: its socket was bound for it), and [`DEFAULT_TIMEOUT`] after.
    pub fn handshake_within(mut stream: S, first: Duration) -> Result<Self, ClientError> {
        Self::send_hello(&mut stream)?;
        Self::hello_answered_within(stream, first)
    }

    /// The first half of a handshake, for a connection made ahead of its use: the agent
    /// answers while the caller does something else; [`Client::hello_answered`] reads it.
    pub fn send_hello(stream: &mut S) -> Result<(), ClientError> {
        let frame_err = |source| ClientError::Frame {
            request: "hello",
            source,
        };
        stream
            .set_write_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(|e| {
                frame_err(FrameError::Io {
                    op: "bounding",
                    source: e,
                })
            })?;
        write_frame(
            stream,
            &Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .map_err(frame_err)
    }

    /// The second half of a handshake begun with [`Client::send_hello`].
    pub fn hello_answered(stream: S) -> Result<Self, ClientError> {
        Self::hello_answered_within(stream, DEFAULT_TIMEOUT)
    }

    fn hello_answered_within(mut stream: S, first: Duration) -> Result<Self, ClientError> {
        let request = "hello";
        let frame_err = |source| ClientError::Frame { request, source };
        stream.set_read_timeout(Some(first)).map_err(|e| {
            frame_err(FrameError::Io {
                op: "bounding",
                source: e,
            })
        })?;
        let response = read_frame(&mut stream).map_err(frame_err)?;
        let timeout = Some(DEFAULT_TIMEOUT);
        match response {
            Response::Hello { version, agent } if version == PROTOCOL_VERSION => Ok(Client {
                stream,
                agent,
                timeout,
                broken: None,
            }),
            Response::Hello { version, .. } => Err(ClientError::VersionMismatch {
                agent: version,
                host: PROTOCOL_VERSION,
            }),
            Response::Error(WireError {
                kind: ErrorKind::VersionMismatch { agent, host },
                ..
            }) => Err(ClientError::VersionMismatch { agent, host }),
            other => Err(unexpected(request, other)),
        }
    }

    /// Bounds each read and write of later requests (`None`: no bound); `wait` reads are
    /// never bounded.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The agent's name and build, from its `Hello`.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    pub fn create_sandbox(&mut self, spec: &SandboxSpec) -> Result<(), ClientError> {
        self.expect_ok("create_sandbox", &Request::CreateSandbox(spec.clone()))
    }

    pub fn create_container(&mut self, spec: &ContainerSpec) -> Result<(), ClientError> {
        self.expect_ok("create_container", &Request::CreateContainer(spec.clone()))
    }

    /// Starts the container's process; returns its pid in the guest.
    pub fn start_container(&mut self, container_id: &str) -> Result<u32, ClientError> {
        self.expect_started(
            "start_container",
            &Request::StartContainer {
                container_id: container_id.into(),
            },
        )
    }

    /// Starts one more process in a running container; returns its pid in the guest.
    pub fn exec(
        &mut self,
        container_id: &str,
        exec_id: &str,
        process: &ProcessSpec,
    ) -> Result<u32, ClientError> {
        self.expect_started(
            "exec",
            &Request::Exec {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                process: process.clone(),
            },
        )
    }

    /// Blocks until the process has exited (this connection is busy meanwhile): the answer
    /// is waited for however long it takes.
    pub fn wait(&mut self, process: &ProcessRef) -> Result<ExitStatus, ClientError> {
        let request = "wait";
        match self.call_with(
            request,
            &Request::Wait {
                process: process.clone(),
            },
            None,
        )? {
            Response::Exited(status) => Ok(status),
            other => Err(unexpected(request, other)),
        }
    }

    pub fn signal(&mut self, process: &ProcessRef, signal: i32) -> Result<(), ClientError> {
        self.expect_ok(
            "signal",
            &Request::Signal {
                process: process.clone(),
                signal,
            },
        )
    }

    pub fn stats(&mut self, container_id: &str) -> Result<ContainerStats, ClientError> {
        let request = "stats";
        match self.call(
            request,
            &Request::Stats {
                container_id: container_id.into(),
            },
        )? {
            Response::Stats(stats) => Ok(stats),
            other => Err(unexpected(request, other)),
        }
    }

    pub fn remove_container(&mut self, container_id: &str) -> Result<(), ClientError> {
        self.expect_ok(
            "remove_container",
            &Request::RemoveContainer {
                container_id: container_id.into(),
            },
        )
    }

    /// Asks the agent to power the VM off; it answers before it does.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.expect_ok("shutdown", &Request::Shutdown)
    }

    /// The underlying stream (to set timeouts, for instance).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    fn call(&mut self, request: &'static str, msg: &Request) -> Result<Response, ClientError> {
        self.call_with(request, msg, self.timeout)
    }

    /// One request; the answer is waited for at most `read_timeout` per read.
    fn call_with(
        &mut self,
        request: &'static str,
        msg: &Request,
        read_timeout: Option<Duration>,
    ) -> Result<Response, ClientError> {
        if let Some(earlier) = self.broken {
            return Err(ClientError::Broken { request, earlier });
        }
        let response = exchange(&mut self.stream, request, msg, self.timeout, read_timeout)
            .inspect_err(|_| self.broken = Some(request))?;
        match response {
            Response::Error(error) => Err(ClientError::Agent { request, error }),
            other => Ok(other),
        }
    }

    fn expect_ok(&mut self, request: &'static str, msg: &Request) -> Result<(), ClientError> {
        match self.call(request, msg)? {
            Response::Ok => Ok(()),
            other => Err(unexpected(request, other)),
        }
    }

    fn expect_started(&mut self, request: &'static str, msg: &Request) -> Result<u32, ClientError> {
        match self.call(request, msg)? {
            Response::Started { pid } => Ok(pid),
            other => Err(unexpected(request, other)),
        }
    }
}

/// Sends the [`StreamHello`] for `stream` of `process` on a fresh stdio connection and
/// checks the agent's answer; afterwards the connection carries raw bytes.
pub fn attach_stream<S: Read + Write>(
    conn: &mut S,
    process: &ProcessRef,
    stream: StreamKind,
) -> Result<(), ClientError> {
    send_stream_attach(conn, process, stream)?;
    read_stream_attached(conn)
}

/// The first half of [`attach_stream`]: the request, whose answer
/// [`read_stream_attached`] reads (so that several attaches can be in flight at once).
pub fn send_stream_attach<S: Write>(
    conn: &mut S,
    process: &ProcessRef,
    stream: StreamKind,
) -> Result<(), ClientError> {
    let hello = StreamHello {
        version: PROTOCOL_VERSION,
        process: process.clone(),
        stream,
    };
    write_frame(conn, &hello).map_err(|source| ClientError::Frame {
        request: "stream attach",
        source,
    })
}

/// The second half of [`attach_stream`]: the agent's answer.
pub fn read_stream_attached<S: Read>(conn: &mut S) -> Result<(), ClientError> {
    let request = "stream attach";
    match read_frame(conn).map_err(|source| ClientError::Frame { request, source })? {
        Response::Ok => Ok(()),
        Response::Error(WireError {
            kind: ErrorKind::VersionMismatch { agent, host },
            ..
        }) => Err(ClientError::VersionMismatch { agent, host }),
        Response::Error(error) => Err(ClientError::Agent { request, error }),
        other => Err(unexpected(request, other)),
    }
}

fn exchange<S: Read + Write + Timeouts>(
    stream: &mut S,
    request: &'static str,
    msg: &Request,
    write_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
) -> Result<Response, ClientError> {
    let frame_err = |source| ClientError::Frame { request, source };
    let setup = |e| {
        frame_err(FrameError::Io {
            op: "bounding",
            source: e,
        })
    };
    stream.set_write_timeout(write_timeout).map_err(setup)?;
    write_frame(stream, msg).map_err(frame_err)?;
    stream.set_read_timeout(read_timeout).map_err(setup)?;
    read_frame(stream).map_err(frame_err)
}

/// The most bytes of an unexpected response kept for the error message.
const MAX_SHOWN: usize = 200;

fn unexpected(request: &'static str, response: Response) -> ClientError {
    let mut response = format!("{response:?}");
    // The agent chose the text: cut it where a character starts, not at a fixed byte.
    let mut cut = response.len().min(MAX_SHOWN);
    while !response.is_char_boundary(cut) {
        cut -= 1;
    }
    response.truncate(cut);
    ClientError::Unexpected { request, response }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::protocol::message::tests::{sample_container, sample_process};

    /// A fake agent: answers each request with what `answer` says, records the requests.
    fn fake_agent(
        answer: impl Fn(&Request) -> Response + Send + 'static,
    ) -> (UnixStream, thread::JoinHandle<Vec<Request>>) {
        let (host, agent) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || {
            let mut agent = agent;
            let mut seen = Vec::new();
            while let Ok(req) = read_frame::<_, Request>(&mut agent) {
                let resp = answer(&req);
                seen.push(req);
                if write_frame(&mut agent, &resp).is_err() {
                    break;
                }
            }
            seen
        });
        (host, handle)
    }

    fn good_agent(req: &Request) -> Response {
        match req {
            Request::Hello { version } => Response::Hello {
                version: *version,
                agent: "fake 1".into(),
            },
            Request::StartContainer { .. } => Response::Started { pid: 7 },
            Request::Exec { .. } => Response::Started { pid: 8 },
            Request::Wait { .. } => Response::Exited(ExitStatus::signaled(9)),
            Request::Stats { .. } => Response::Stats(ContainerStats {
                pids_current: 3,
                ..Default::default()
            }),
            _ => Response::Ok,
        }
    }

    #[test]
    fn a_handshake_in_two_halves_is_one_handshake() {
        let (mut stream, agent) = fake_agent(good_agent);
        Client::send_hello(&mut stream).unwrap();
        // The answer waits in the socket meanwhile.
        thread::sleep(Duration::from_millis(20));
        let mut c = Client::hello_answered(stream).unwrap();
        assert_eq!(c.agent(), "fake 1");
        assert_eq!(c.start_container("web").unwrap(), 7);
        drop(c);
        let seen = agent.join().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let (mut stream, _agent) = fake_agent(|_| Response::Hello {
            version: PROTOCOL_VERSION + 1,
            agent: "new".into(),
        });
        Client::send_hello(&mut stream).unwrap();
        assert!(matches!(
            Client::hello_answered(stream),
            Err(ClientError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn every_method_sends_its_request_and_types_the_answer() {
        let (stream, agent) = fake_agent(good_agent);
        let mut c = Client::handshake(stream).unwrap();
        assert_eq!(c.agent(), "fake 1");
        let spec = sample_container("web");
        let web = ProcessRef::container("web");
        c.create_sandbox(&SandboxSpec {
            hostname: "pod".into(),
            ..Default::default()
        })
        .unwrap();
        c.create_container(&spec).unwrap();
        assert_eq!(c.start_container("web").unwrap(), 7);
        assert_eq!(c.exec("web", "e1", &sample_process()).unwrap(), 8);
        assert_eq!(c.wait(&web).unwrap(), ExitStatus::signaled(9));
        c.signal(&web, 15).unwrap();
        assert_eq!(c.stats("web").unwrap().pids_current, 3);
        c.remove_container("web").unwrap();
        c.shutdown().unwrap();
        drop(c);
        let seen = agent.join().unwrap();
        assert_eq!(
            seen[0],
            Request::Hello {
                version: PROTOCOL_VERSION
            }
        );
        assert_eq!(seen[2], Request::CreateContainer(spec));
        assert_eq!(
            seen[6],
            Request::Signal {
                process: web,
                signal: 15
            }
        );
        assert_eq!(seen.last(), Some(&Request::Shutdown));
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn a_long_unexpected_answer_is_cut_at_a_character_boundary() {
        // Wherever byte 200 falls, inside a 2-, 3- or 4-byte character or not.
        for ch in ['é', '€', '🦀'] {
            for pad in 0..4 {
                let agent = format!("{}{}", "x".repeat(pad), ch.to_string().repeat(300));
                let err = unexpected("wait", Response::Hello { version: 1, agent });
                let ClientError::Unexpected { response, .. } = &err else {
                    panic!("{err}");
                };
                assert!(response.len() <= 200, "{}", response.len());
                assert!(response.len() > 190, "{}", response.len());
                assert!(response.starts_with("Hello { version: 1, agent: \""));
            }
        }
    }

    /// An agent that says hello, then answers `wait` after `wait_delay` and nothing else.
    fn silent_agent(wait_delay: Duration) -> UnixStream {
        let (host, agent) = UnixStream::pair().unwrap();
        thread::spawn(move || {
            let mut agent = agent;
            while let Ok(req) = read_frame::<_, Request>(&mut agent) {
                let resp = match req {
                    Request::Hello { version } => Response::Hello {
                        version,
                        agent: "silent".into(),
                    },
                    Request::Wait { .. } => {
                        thread::sleep(wait_delay);
                        Response::Exited(ExitStatus::signaled(9))
                    }
                    // Accepted, never answered; the connection stays open.
                    _ => continue,
                };
                if write_frame(&mut agent, &resp).is_err() {
                    break;
                }
            }
        });
        host
    }

    #[test]
    fn an_agent_that_never_answers_times_out_except_for_wait() {
        let (done, finished) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut c = Client::handshake(silent_agent(Duration::from_millis(600))).unwrap();
            c.set_timeout(Some(Duration::from_millis(200)));
            let started = std::time::Instant::now();
            let stats = c.stats("web").map(|_| ());
            let waited = started.elapsed();
            let _ = done.send((stats, waited));
        });
        let (stats, waited) = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a request to a silent agent hangs");
        let err = stats.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Frame {
                    request: "stats",
                    source: FrameError::TimedOut(_)
                }
            ),
            "{err}"
        );
        assert!(waited < Duration::from_secs(5), "{waited:?}");

        // `wait` blocks as long as the process runs, past the timeout; the next request is
        // bounded again. A connection that timed out is not used again (a late answer would
        // be taken for the next request's).
        let mut c = Client::handshake(silent_agent(Duration::from_millis(600))).unwrap();
        c.set_timeout(Some(Duration::from_millis(200)));
        assert_eq!(
            c.wait(&ProcessRef::container("web")).unwrap(),
            ExitStatus::signaled(9)
        );
        let err = c.signal(&ProcessRef::container("web"), 15).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Frame {
                    source: FrameError::TimedOut(_),
                    ..
                }
            ),
            "{err}"
        );
        let err = c.shutdown().unwrap_err();
        assert!(matches!(err, ClientError::Broken { .. }), "{err}");
        assert!(err.to_string().contains("signal"), "{err}");
    }

    #[test]
    fn a_different_version_is_a_clear_error() {
        let (stream, _agent) = fake_agent(|_| Response::Hello {
            version: PROTOCOL_VERSION + 1,
            agent: "future".into(),
        });
        let err = Client::handshake(stream).unwrap_err();
        assert!(matches!(err, ClientError::VersionMismatch { agent, host }
            if agent == PROTOCOL_VERSION + 1 && host == PROTOCOL_VERSION));
        assert!(err.to_string().contains("rebuild the agent initramfs"));

        let (stream, _agent) = fake_agent(|_| {
            Response::Error(WireError::new(
                ErrorKind::VersionMismatch {
                    agent: 0,
                    host: PROTOCOL_VERSION,
                },
                "old agent",
            ))
        });
        let err = Client::handshake(stream).unwrap_err();
        assert!(matches!(err, ClientError::VersionMismatch { agent: 0, .. }));
    }

    #[test]
    fn agent_errors_and_wrong_answers_are_typed() {
        let (stream, _agent) = fake_agent(|req| match req {
            Request::Hello { version } => Response::Hello {
                version: *version,
                agent: "fake".into(),
            },
            Request::StartContainer { .. } => {
                Response::Error(WireError::new(ErrorKind::NotFound, "no container x"))
            }
            _ => Response::Started { pid: 1 },
        });
        let mut c = Client::handshake(stream).unwrap();
        let err = c.start_container("x").unwrap_err();
        assert_eq!(err.wire_kind(), Some(ErrorKind::NotFound));
        assert!(err.to_string().contains("start_container"), "{err}");
        let err = c.wait(&ProcessRef::container("x")).unwrap_err();
        assert!(matches!(
            err,
            ClientError::Unexpected {
                request: "wait",
                ..
            }
        ));
    }

    #[test]
    fn a_closed_or_garbled_agent_is_an_error_not_a_panic() {
        let (stream, agent) = UnixStream::pair().unwrap();
        drop(agent);
        let err = Client::handshake(stream).unwrap_err();
        assert!(matches!(err, ClientError::Frame { .. }), "{err}");

        let (stream, mut agent) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let _ = read_frame::<_, Request>(&mut agent);
            agent.write_all(&u32::MAX.to_be_bytes()).unwrap();
        });
        let err = Client::handshake(stream).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Frame {
                    source: FrameError::TooLarge { .. },
                    ..
                }
            ),
            "{err}"
        );
        t.join().unwrap();
    }

    #[test]
    fn stream_attach_sends_its_hello_and_checks_the_answer() {
        let (mut host, mut agent) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let hello: StreamHello = read_frame(&mut agent).unwrap();
            write_frame(&mut agent, &Response::Ok).unwrap();
            agent.write_all(b"raw bytes").unwrap();
            let hello2: StreamHello = read_frame(&mut agent).unwrap();
            write_frame(
                &mut agent,
                &Response::Error(WireError::new(ErrorKind::AlreadyExists, "attached")),
            )
            .unwrap();
            (hello, hello2)
        });
        let p = ProcessRef::exec("web", "e1");
        attach_stream(&mut host, &p, StreamKind::Stdout).unwrap();
        let mut raw = [0u8; 9];
        host.read_exact(&mut raw).unwrap();
        assert_eq!(&raw, b"raw bytes");
        let err = attach_stream(&mut host, &p, StreamKind::Stdout).unwrap_err();
        assert_eq!(err.wire_kind(), Some(ErrorKind::AlreadyExists));
        let (hello, _) = t.join().unwrap();
        assert_eq!(hello.process, p);
        assert_eq!(hello.stream, StreamKind::Stdout);
        assert_eq!(hello.version, PROTOCOL_VERSION);
    }
}
