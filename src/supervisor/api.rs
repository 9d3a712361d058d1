//! The supervisor's API: what the CLI (and later a containerd shim) asks a pod's supervisor
//! over the unix socket in the pod's run directory.
//!
//! Framing is the agent protocol's ([`crate::protocol::frame`]: a 4-byte big-endian length,
//! then JSON). The first request on every connection is [`ApiRequest::Hello`] with
//! [`API_VERSION`]; the supervisor answers [`ApiResponse::Hello`] when the versions are equal
//! and an error naming both otherwise. Each later request gets exactly one response, except
//! [`ApiRequest::Attach`] and [`ApiRequest::Exec`]: after their [`ApiResponse::Attached`]
//! the connection carries [`super::stream`] frames (output, input, signals, the exit status)
//! until the process has ended.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pod::state::PodState;
use crate::protocol::frame::{FrameError, read_frame, write_frame};
use crate::protocol::{ExitStatus, ProcessSpec};

/// Version of this API; bumped on any incompatible change. The shape of `Hello` never
/// changes.
pub const API_VERSION: u32 = 1;

/// A request to a pod's supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiRequest {
    /// First on every connection.
    Hello { version: u32 },
    /// The pod's state now. → `State`.
    Status,
    /// Starts the pod's containers (a pod is created stopped, as `docker create`). → `Ok`,
    /// or `Error` with the exit code when a container's command cannot be run.
    Start,
    /// Attaches to a container's stdio: → `Attached`, then stream frames until it exits.
    /// With `start`, the pod's containers start once the attachment is in place, so no
    /// output is missed (what a foreground `peapod run` does).
    Attach {
        container: String,
        stdin: bool,
        start: bool,
    },
    /// Runs one more process in a running container: → `Attached`, then stream frames.
    Exec {
        container: String,
        process: ProcessSpec,
    },
    /// Sends a signal to the main process of one container (all when `None`). → `Ok`.
    Signal {
        container: Option<String>,
        signal: i32,
    },
    /// SIGTERM to every container, SIGKILL after `timeout_s`, then the VM powers off. →
    /// `State` once the pod is down.
    Stop { timeout_s: u64 },
    /// Blocks until the pod is down. → `State`.
    Wait,
}

/// The supervisor's answer to one [`ApiRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiResponse {
    Hello {
        version: u32,
    },
    Ok,
    State(Box<PodState>),
    /// The stream frames follow.
    Attached,
    Error {
        message: String,
        /// The exit status this failure gives the command (126/127 when a command cannot
        /// be run), where one applies.
        #[serde(default)]
        exit_code: Option<i32>,
    },
}

impl ApiResponse {
    pub fn error(message: impl Into<String>) -> Self {
        ApiResponse::Error {
            message: message.into(),
            exit_code: None,
        }
    }
}

/// How an attached or exec'd process ended: the last stream frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessEnd {
    pub status: ExitStatus,
    /// Why the process could not be started, when it could not (its status is then 126 or
    /// 127).
    #[serde(default)]
    pub start_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot reach the pod's supervisor at {socket}: {source} (the pod is not running; see \
         peapod ps -a)"
    )]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the supervisor speaks API version {supervisor} and this peapod {cli}: use the peapod that started the pod"
    )]
    VersionMismatch { supervisor: u32, cli: u32 },
    #[error("{message}")]
    Refused {
        message: String,
        exit_code: Option<i32>,
    },
    #[error("talking to the pod's supervisor: {0}")]
    Frame(#[from] FrameError),
    #[error("the supervisor gave an unexpected answer: {0}")]
    Unexpected(String),
}

/// A handshaken connection to a pod's supervisor.
pub struct ApiClient {
    stream: UnixStream,
}

impl ApiClient {
    pub fn connect(socket: &Path) -> Result<Self, ApiError> {
        let stream = UnixStream::connect(socket).map_err(|source| ApiError::Connect {
            socket: socket.display().to_string(),
            source,
        })?;
        let mut client = ApiClient { stream };
        client.send(&ApiRequest::Hello {
            version: API_VERSION,
        })?;
        client.hello_answered()
    }

    /// A client on `stream`, on which hello and then other requests were sent already
    /// (see [`crate::supervisor::spawn`]): reads hello's answer; the others' follow, in
    /// order ([`ApiClient::answer`], [`ApiClient::attached`]).
    pub fn pipelined(stream: UnixStream) -> Result<Self, ApiError> {
        ApiClient { stream }.hello_answered()
    }

    fn hello_answered(mut self) -> Result<Self, ApiError> {
        match self.answer()? {
            ApiResponse::Hello { version } if version == API_VERSION => Ok(self),
            ApiResponse::Hello { version } => Err(ApiError::VersionMismatch {
                supervisor: version,
                cli: API_VERSION,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Sends one request and reads its answer; an `Error` answer is [`ApiError::Refused`].
    pub fn call(&mut self, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        self.send(request)?;
        self.answer()
    }

    /// Sends one request; its answer comes with [`ApiClient::answer`].
    pub fn send(&mut self, request: &ApiRequest) -> Result<(), ApiError> {
        Ok(write_frame(&mut self.stream, request)?)
    }

    /// Reads the answer to the oldest request not answered yet; an `Error` answer is
    /// [`ApiError::Refused`].
    pub fn answer(&mut self) -> Result<ApiResponse, ApiError> {
        match read_frame(&mut self.stream)? {
            ApiResponse::Error { message, exit_code } => {
                Err(ApiError::Refused { message, exit_code })
            }
            other => Ok(other),
        }
    }

    pub fn expect_ok(&mut self, request: &ApiRequest) -> Result<(), ApiError> {
        self.send(request)?;
        self.answer_ok()
    }

    /// Reads the answer to a request sent before, which must be `Ok`.
    pub fn answer_ok(&mut self) -> Result<(), ApiError> {
        match self.answer()? {
            ApiResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn expect_state(&mut self, request: &ApiRequest) -> Result<PodState, ApiError> {
        match self.call(request)? {
            ApiResponse::State(state) => Ok(*state),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `Attach` or `Exec`; on `Attached` returns the stream that now carries frames.
    pub fn attach(mut self, request: &ApiRequest) -> Result<UnixStream, ApiError> {
        self.send(request)?;
        self.attached()
    }

    /// Reads the answer to an `Attach` or `Exec` sent before; on `Attached` returns the
    /// stream that now carries frames.
    pub fn attached(mut self) -> Result<UnixStream, ApiError> {
        match self.answer()? {
            ApiResponse::Attached => Ok(self.stream),
            other => Err(unexpected(other)),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
}

fn unexpected(response: ApiResponse) -> ApiError {
    let text: String = format!("{response:?}").chars().take(200).collect();
    ApiError::Unexpected(text)
}

/// The supervisor's side of one request/response exchange.
pub fn read_request<R: Read>(r: &mut R) -> Result<ApiRequest, FrameError> {
    read_frame(r)
}

pub fn write_response<W: Write>(w: &mut W, response: &ApiResponse) -> Result<(), FrameError> {
    write_frame(w, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_snake_case_and_refuse_unknown_fields() {
        let json = serde_json::to_string(&ApiRequest::Stop { timeout_s: 10 }).unwrap();
        assert_eq!(json, r#"{"stop":{"timeout_s":10}}"#);
        let bad: Result<ApiRequest, _> = serde_json::from_str(r#"{"stop":{"timeout":10}}"#);
        assert!(bad.is_err());
        let wait: ApiRequest = serde_json::from_str(r#""wait""#).unwrap();
        assert_eq!(wait, ApiRequest::Wait);
    }

    #[test]
    fn an_error_without_exit_code_decodes() {
        let r: ApiResponse = serde_json::from_str(r#"{"error":{"message":"no"}}"#).unwrap();
        assert_eq!(r, ApiResponse::error("no"));
    }

    #[test]
    fn a_client_handshakes_and_gets_refusals_as_errors() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            assert_eq!(
                read_request(&mut conn).unwrap(),
                ApiRequest::Hello {
                    version: API_VERSION
                }
            );
            write_response(
                &mut conn,
                &ApiResponse::Hello {
                    version: API_VERSION,
                },
            )
            .unwrap();
            assert_eq!(read_request(&mut conn).unwrap(), ApiRequest::Start);
            write_response(
                &mut conn,
                &ApiResponse::Error {
                    message: "sh: not found".into(),
                    exit_code: Some(127),
                },
            )
            .unwrap();
        });
        let mut client = ApiClient::connect(&socket).unwrap();
        match client.expect_ok(&ApiRequest::Start) {
            Err(ApiError::Refused { message, exit_code }) => {
                assert_eq!(message, "sh: not found");
                assert_eq!(exit_code, Some(127));
            }
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn a_missing_supervisor_says_the_pod_is_not_running() {
        let err = ApiClient::connect(Path::new("/nonexistent/supervisor.sock"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("not running"), "{err}");
    }
}
