//! Pod networking on the host.

pub mod ports;
