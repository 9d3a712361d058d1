//! The microVM monitor: KVM, guest memory, vCPUs, boot, devices.
