//! Where a pod's agent answers, and the connections the host makes to it: the same
//! [`crate::protocol`] on two kinds of transport.
//!
//! * [`AgentEndpoint::Vsock`]: a pod VM's agent, behind the VMM's hybrid-vsock socket
//!   (`CONNECT <port>` on a Unix socket, then the guest's stream; see
//!   [`crate::vmm::virtio::vsock::connect_to_guest`]).
//! * [`AgentEndpoint::Unix`]: a host pod's agent (the container runtime), one Unix socket per
//!   protocol port in the pod's directory, `agent-<port>.sock`, so that the ports keep their
//!   meaning (control, stdio) with no VM in between.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::client::{
    Client, ClientError, attach_stream, read_stream_attached, send_stream_attach,
};
use crate::protocol::{CONTROL_PORT, ProcessRef, STDIO_PORT, StreamKind};
use crate::vmm::virtio::vsock::{ConnectError, connect_to_guest};

/// How long a connection to a running pod's agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while a host agent's socket is not there yet.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot connect to the agent: {0}")]
    Vsock(#[from] ConnectError),
    #[error(
        "cannot connect to the pod's agent at {path} within {timeout:?}: {source} (is the pod's \
         host agent running? its log is host-agent.log beside the socket)"
    )]
    Unix {
        path: PathBuf,
        timeout: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("attaching the streams of {process}: {conns} connections for {streams} streams")]
    StreamCount {
        process: String,
        conns: usize,
        streams: usize,
    },
}

/// How the host reaches one pod's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// The VMM's hybrid-vsock Unix socket.
    Vsock { uds: PathBuf },
    /// A directory holding the host agent's `agent-<port>.sock` sockets.
    Unix { dir: PathBuf },
}

impl AgentEndpoint {
    /// The socket a host agent listens on for protocol port `port` in `dir`.
    pub fn unix_socket(dir: &Path, port: u32) -> PathBuf {
        dir.join(format!("agent-{port}.sock"))
    }

    /// A raw stream to the agent's `port`, retried until `timeout` while nothing listens
    /// yet.
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, EndpointError> {
        match self {
            AgentEndpoint::Vsock { uds } => Ok(connect_to_guest(uds, port, timeout)?),
            AgentEndpoint::Unix { dir } => {
                let path = Self::unix_socket(dir, port);
                let deadline = Instant::now() + timeout;
                loop {
                    match UnixStream::connect(&path) {
                        Ok(stream) => return Ok(stream),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::NotFound
                                    | std::io::ErrorKind::ConnectionRefused
                            ) && Instant::now() < deadline =>
                        {
                            std::thread::sleep(RETRY_PAUSE);
                        }
                        Err(source) => {
                            return Err(EndpointError::Unix {
                                path,
                                timeout,
                                source,
                            });
                        }
                    }
                }
            }
        }
    }

    /// A handshaken control connection.
    pub fn control(&self) -> Result<Client<UnixStream>, EndpointError> {
        let stream = self.connect(CONTROL_PORT, CONNECT_TIMEOUT)?;
        Client::handshake(stream).map_err(|source| EndpointError::Agent {
            what: "handshake on a new control connection".into(),
            source,
        })
    }

    /// A control connection made ahead of its use: connected and its hello sent, the
    /// agent's answer read by [`Client::hello_answered`] when it is used.
    pub fn control_ahead(&self) -> Result<UnixStream, EndpointError> {
        let mut stream = self.connect(CONTROL_PORT, CONNECT_TIMEOUT)?;
        Client::send_hello(&mut stream).map_err(|source| EndpointError::Agent {
            what: "hello on a new control connection".into(),
            source,
        })?;
        Ok(stream)
    }

    /// Attaches `stream` of `process`: a stdio connection that now carries raw bytes.
    pub fn attach(
        &self,
        process: &ProcessRef,
        stream: StreamKind,
    ) -> Result<UnixStream, EndpointError> {
        let mut conn = self.connect(STDIO_PORT, CONNECT_TIMEOUT)?;
        attach_stream(&mut conn, process, stream).map_err(|source| EndpointError::Agent {
            what: format!("attaching {} of {process}", stream.as_str()),
            source,
        })?;
        Ok(conn)
    }

    /// Attaches several streams of `process` at once: every request is sent before the
    /// first answer is read, so that the agent serves them side by side (a container's
    /// stdout and stderr before its start, where each round trip is on the pod's path).
    pub fn attach_all(
        &self,
        process: &ProcessRef,
        streams: &[StreamKind],
    ) -> Result<Vec<UnixStream>, EndpointError> {
        let conns = self.stdio_connections(streams.len())?;
        attach_on(conns, process, streams)
    }

    /// `n` connections to the agent's stdio port, for [`attach_on`] later: made while the
    /// agent is busy with something else (creating the container whose streams they are),
    /// the agent has them accepted by the time they are asked for.
    pub fn stdio_connections(&self, n: usize) -> Result<Vec<UnixStream>, EndpointError> {
        (0..n)
            .map(|_| self.connect(STDIO_PORT, CONNECT_TIMEOUT))
            .collect()
    }
}

/// Attaches `streams[i]` of `process` on `conns[i]` (from
/// [`AgentEndpoint::stdio_connections`]), every request sent before the first answer is
/// read; returns the connections, which now carry the raw streams.
pub fn attach_on(
    mut conns: Vec<UnixStream>,
    process: &ProcessRef,
    streams: &[StreamKind],
) -> Result<Vec<UnixStream>, EndpointError> {
    let failed = |stream: StreamKind| {
        move |source| EndpointError::Agent {
            what: format!("attaching {} of {process}", stream.as_str()),
            source,
        }
    };
    if conns.len() != streams.len() {
        return Err(EndpointError::StreamCount {
            process: process.to_string(),
            conns: conns.len(),
            streams: streams.len(),
        });
    }
    for (conn, &stream) in conns.iter_mut().zip(streams) {
        send_stream_attach(conn, process, stream).map_err(failed(stream))?;
    }
    for (conn, &stream) in conns.iter_mut().zip(streams) {
        read_stream_attached(conn).map_err(failed(stream))?;
    }
    Ok(conns)
}

impl AgentEndpoint {}

/// Signals one process of a pod from any thread, on a connection of its own.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    pub endpoint: AgentEndpoint,
    pub process: ProcessRef,
}

impl ProcessHandle {
    pub fn signal(&self, signal: i32) -> Result<(), EndpointError> {
        let mut client = self.endpoint.control()?;
        client
            .signal(&self.process, signal)
            .map_err(|source| EndpointError::Agent {
                what: format!("signal {signal} to {}", self.process),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_agent_has_one_socket_per_port() {
        let dir = Path::new("/run/peapod/abc");
        assert_eq!(
            AgentEndpoint::unix_socket(dir, CONTROL_PORT),
            dir.join(format!("agent-{CONTROL_PORT}.sock"))
        );
        assert_ne!(
            AgentEndpoint::unix_socket(dir, CONTROL_PORT),
            AgentEndpoint::unix_socket(dir, STDIO_PORT)
        );
    }

    #[test]
    fn a_unix_endpoint_waits_for_its_socket_then_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = AgentEndpoint::Unix {
            dir: dir.path().to_path_buf(),
        };
        let path = AgentEndpoint::unix_socket(dir.path(), 7);
        let binder = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
                l.accept().unwrap()
            })
        };
        endpoint.connect(7, Duration::from_secs(5)).unwrap();
        binder.join().unwrap();
        match endpoint.connect(8, Duration::from_millis(30)).unwrap_err() {
            EndpointError::Unix { path, .. } => {
                assert_eq!(path, AgentEndpoint::unix_socket(dir.path(), 8))
            }
            other => panic!("{other}"),
        }
    }

    /// A fake agent that answers no attach before it has all three requests: attaching
    /// one stream after the other would leave it with one.
    #[test]
    fn attaches_are_all_asked_before_any_answer_is_read() {
        use crate::protocol::frame::{read_frame, write_frame};
        use crate::protocol::message::{Response, StreamHello};
        let dir = tempfile::tempdir().unwrap();
        let endpoint = AgentEndpoint::Unix {
            dir: dir.path().to_path_buf(),
        };
        let listener = std::os::unix::net::UnixListener::bind(AgentEndpoint::unix_socket(
            dir.path(),
            STDIO_PORT,
        ))
        .unwrap();
        let agent = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(2);
            listener.set_nonblocking(true).unwrap();
            let mut asked = Vec::new();
            while asked.len() < 3 && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let hello: StreamHello = read_frame(&mut conn).unwrap();
                        asked.push((conn, hello.stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            let kinds: Vec<StreamKind> = asked.iter().map(|(_, k)| *k).collect();
            for (conn, _) in &mut asked {
                write_frame(conn, &Response::Ok).unwrap();
            }
            kinds
        });
        let kinds = [StreamKind::Stdout, StreamKind::Stderr, StreamKind::Stdin];
        let streams = endpoint
            .attach_all(&ProcessRef::container("main"), &kinds)
            .unwrap();
        assert_eq!(streams.len(), 3);
        assert_eq!(agent.join().unwrap(), kinds);
    }
}
