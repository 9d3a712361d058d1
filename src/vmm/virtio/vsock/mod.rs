//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid host side: guest streams become
//! host Unix-socket streams.
//!
//! - [`host`]: the host's end of the protocol, [`connect_to_guest`] and the paths of the Unix
//!   sockets.

pub mod host;

pub use host::{ConnectError, connect_to_guest, host_listener_path};
