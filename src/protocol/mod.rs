//! The host↔agent protocol: what the host (peapod's VM runtime) and the guest agent
//! (`peapod-agent`, PID 1 in every pod VM) say to each other, used by both sides.
//!
//! # Transport and ports
//!
//! Everything travels over vsock. The agent listens on the guest side with
//! `VMADDR_CID_ANY` on two fixed ports:
//!
//! * [`CONTROL_PORT`] (1024, the port Kata's agent uses too): control connections carrying
//!   [`Request`]/[`Response`] frames;
//! * [`STDIO_PORT`] (1025): one connection per stdio stream of one process.
//!
//! The agent accepts any number of control connections and serves each one on its own
//! thread. On one connection requests are answered strictly in order, one response per
//! request, so a blocking [`Request::Wait`] ties up its connection: the host opens one
//! connection per waiter (cheap: a vsock connect) and keeps one for everything else.
//!
//! # Framing
//!
//! A frame is a 4-byte **big-endian** (network order) payload length followed by that many
//! bytes of **JSON** ([`frame`]). A length above [`MAX_FRAME_LEN`] (1 MiB) is refused before
//! anything is allocated, and a payload that is not valid UTF-8 JSON of the expected type is
//! refused with [`FrameError::Malformed`]; the decoder never panics (it is the cargo-fuzz
//! target `fuzz/fuzz_targets/protocol_decode.rs`).
//!
//! Why JSON rather than a bincode-like format: `serde_json` is already a dependency (no new
//! crate in the static agent), a frame can be read in a log or typed with `socat`, serde's
//! `deny_unknown_fields` makes a field one side does not know a clear error instead of a
//! silent misparse, and a self-describing format keeps the handshake readable across
//! versions. The cost (a few hundred bytes and microseconds per request) does not matter:
//! control messages are a handful per container, and bulk data (stdio) never goes through
//! JSON.
//!
//! # Versioning
//!
//! The first frame on every control connection is [`Request::Hello`] with the host's
//! [`PROTOCOL_VERSION`]. The agent answers [`Response::Hello`] with its own version when they
//! are equal, and otherwise [`Response::Error`] with [`ErrorKind::VersionMismatch`] naming
//! both versions, then closes the connection. The client ([`client::Client`]) turns either a
//! mismatched `Hello` or that error into [`client::ClientError::VersionMismatch`]. Any other
//! request before the handshake is refused with [`ErrorKind::HandshakeRequired`]. The shape
//! of `Hello` (`{"hello":{"version":N}}`) never changes, so any two versions can at least
//! tell each other that they differ. The version is bumped on any incompatible change.
//!
//! Version history:
//!
//! * 1: the first.
//! * 2: pod volumes and read-only roots. [`SandboxSpec::volumes`] lists the pod's
//!   [`SandboxVolume`]s, made by `CreateSandbox` and kept until the VM ends:
//!   [`SandboxVolumeKind::EmptyDir`] (`{"empty_dir":{"size_bytes":N}}`, a tmpfs) and
//!   [`SandboxVolumeKind::Secret`] (`{"secret":{"files":{"name":"<base64>"}}}`, files of
//!   mode 0400 on a read-only tmpfs; the whole request still fits one 1 MiB frame).
//!   Containers mount them with [`MountSource::PodVolume`] (`{"pod_volume":{"name":"cache",
//!   "sub_path":"a/b"}}`). [`RootfsSpec::read_only`] makes a container's `/` read-only.
//!   All new fields default (`volumes: []`, `read_only: false`, `sub_path: null`), so a
//!   version 1 spec decodes to the same thing; the bump is for the agent's side: a version 1
//!   agent would refuse the new fields, and the handshake says so up front.
//! * 3: pod networking. [`SandboxSpec::network`] (default none) lists the pod's
//!   [`NetInterface`]s (name, the guest NIC's MAC, MTU, addresses as [`IpCidr`]
//!   `{"ip":"10.88.0.5","prefix_len":16}`) and [`NetRoute`]s (`destination` none for the
//!   default route, `gateway`, `interface`). The agent finds each NIC by its MAC, moves it
//!   into the pod's network namespace and configures it there, then adds the routes; the
//!   pod's `/etc/hosts` maps its first address to its hostname. A version 2 agent would
//!   refuse the field.
//! * 4: container hardening. [`ContainerSpec::privileged`] (default false) keeps every
//!   capability, no seccomp filter and an unmasked `/proc` and writable `/sys`; without it
//!   a container's process gets docker's default capabilities, `no_new_privs` and (where
//!   the pod's layout says so) docker's seccomp profile. A version 3 agent would refuse the
//!   field, and would run containers with every capability.
//!
//! # Restarting a container
//!
//! A container whose process has exited is restarted in the running VM with the same id:
//! [`Request::RemoveContainer`], then [`Request::CreateContainer`] (same spec), then
//! [`Request::StartContainer`], then new stdio attaches. Remove frees the id, its cgroup and
//! its directories; the pod's volumes (an `emptyDir`'s files included) are untouched, so the
//! new process finds what the old one left there. Streams belong to one process: the old
//! process's streams end at its exit, and the new one's are attached afresh (before or after
//! the start, as for any container). A `Wait` still blocked on the old process returns its
//! status; one sent after the remove names the new container (or `not_found` between the
//! remove and the create).
//!
//! # Stdio streams
//!
//! stdio is not polled through RPCs (unlike Kata's `ReadStdout`/`WriteStdin`): each stream of
//! each process is its own vsock connection to [`STDIO_PORT`], so bytes flow with the
//! kernel's own flow control and a quiet stream costs nothing. The host connects and sends
//! one frame, a [`StreamHello`] naming the protocol version, the process
//! ([`ProcessRef`]: container id plus exec id, none for the container's own process) and the
//! [`StreamKind`]; the agent answers one [`Response`] frame (`ok` or `error`). After that
//! the connection carries raw bytes only:
//!
//! * `stdout` / `stderr`: agent → host; the agent shuts down its write side when the process
//!   (and every process it passed the pipe to) closed it;
//! * `stdin`: host → agent; the host half-closes (shutdown write) to give the process EOF.
//!   Only for processes created with `stdin: true` (otherwise stdin is `/dev/null`);
//! * `pty`: both ways, for processes created with `tty: true` (they have no separate
//!   stdout/stderr/stdin streams).
//!
//! A stream can be attached once. Output is never lost to a late attach: it waits in the
//! pipe (and the process blocks once the pipe is full) until the host attaches, so the host
//! may attach before or after [`Request::StartContainer`] / [`Request::Exec`].

pub mod client;
pub mod frame;
pub mod message;

pub use frame::{FrameError, MAX_FRAME_LEN, decode_frame, encode_frame, read_frame, write_frame};
pub use message::*;

/// Version of this protocol; see the module docs on versioning.
pub const PROTOCOL_VERSION: u32 = 4;

/// vsock port of the agent's control connections.
pub const CONTROL_PORT: u32 = 1024;

/// vsock port of the agent's stdio streams.
pub const STDIO_PORT: u32 = 1025;
