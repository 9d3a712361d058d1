//! What a VMM process tells whoever started it, as data: [`VmmEvent`]s, one JSON object per
//! line, on an inherited file descriptor (`--events-fd N`).
//!
//! In order, a VM that boots and ends says:
//!
//! ```text
//! {"event":"started","pid":4242}
//! {"event":"running"}
//! {"event":"boot_signal","ms":412.9}
//! {"event":"exited","reason":"the guest rebooted","clean":true,"first_output_ms":84.1,"boot_signal_ms":412.9,"total_ms":530.0}
//! ```
//!
//! and one that cannot be built says `failed` (after `started`, or instead of it when its
//! config is bad). Times are milliseconds since the VMM process started. `boot_signal` is
//! written the moment the guest's boot signal arrives (see
//! [`boot_signal`](crate::vmm::devices::boot_signal)), not at the end.
//!
//! The writer side is an [`EventSink`]: the VMM must not die because its reader went away,
//! so a failed write is logged once and the sink goes quiet. The reader side is
//! [`read_events`], which skips lines it cannot parse (with a warning) instead of failing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::vmm::devices::boot_signal::BootTimes;
use crate::vmm::stop::GuestExit;

/// Longest event line [`read_events`] accepts; longer lines are skipped.
pub const MAX_EVENT_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(
        "--events-fd {fd}: that file descriptor is not open in the VMM ({source}); the parent \
         must pass an open pipe or file at that number"
    )]
    BadFd {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
}

/// One thing that happened to a VMM, in the order they happen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum VmmEvent {
    /// The config was read and checked; the VMM is about to build the VM.
    Started { pid: u32 },
    /// The vCPUs were started: the guest runs.
    Running,
    /// The guest's boot signal arrived, `ms` after the VMM started.
    BootSignal { ms: f64 },
    /// The VM ended. `reason` says how, in words; `clean` is whether the guest ended as a
    /// healthy guest does (it rebooted or powered off).
    Exited {
        reason: String,
        clean: bool,
        first_output_ms: Option<f64>,
        boot_signal_ms: Option<f64>,
        total_ms: f64,
    },
    /// The VM could not be built or booted (a bad config, no KVM, a missing kernel, ...).
    Failed { message: String },
}

impl VmmEvent {
    /// The `exited` event of a VM that ended with `exit` after `times`.
    pub fn exited(exit: &GuestExit, times: &BootTimes) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        VmmEvent::Exited {
            reason: exit.to_string(),
            clean: exit.is_clean(),
            first_output_ms: times.first_output.map(ms),
            boot_signal_ms: times.boot_signal.map(ms),
            total_ms: ms(times.total),
        }
    }
}

/// Where a VMM writes its events; shared by the threads that see them (`Arc<EventSink>`).
pub struct EventSink {
    /// `None` once a write has failed (or for a sink that discards).
    out: Mutex<Option<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl EventSink {
    /// A sink writing to `out`.
    pub fn new(out: impl Write + Send + 'static) -> Self {
        EventSink {
            out: Mutex::new(Some(Box::new(out))),
        }
    }

    /// A sink that drops every event (no `--events-fd`).
    pub fn discard() -> Self {
        EventSink {
            out: Mutex::new(None),
        }
    }

    /// A sink writing to the inherited descriptor `fd` (`--events-fd`). It writes to a
    /// close-on-exec duplicate, so `fd` itself is left as it is and never closed behind
    /// the back of anything else that uses it (`--events-fd 2` works too).
    pub fn from_inherited_fd(fd: RawFd) -> Result<Self, EventsError> {
        // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor table: on a closed or invalid
        // `fd` it fails with EBADF and touches nothing.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(EventsError::BadFd {
                fd,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `dup` is a descriptor fcntl just created for us; nothing else refers to
        // it, so this OwnedFd is its only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        Ok(Self::new(std::fs::File::from(owned)))
    }

    /// Writes `event` as one line. A write that fails is logged, and the sink writes
    /// nothing more: the VMM goes on with its VM whether or not anybody listens.
    pub fn emit(&self, event: &VmmEvent) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Some(w) = out.as_mut() else {
            return;
        };
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!("cannot encode VMM event {event:?}: {e}");
                return;
            }
        };
        line.push(b'\n');
        // One write of the whole line (atomic on a pipe up to PIPE_BUF bytes), then a
        // flush, so a reader sees each event as it happens.
        if let Err(e) = w.write_all(&line).and_then(|()| w.flush()) {
            tracing::warn!("cannot write VMM events ({e}); no more events are sent");
            *out = None;
        }
    }
}

/// Reads events, one JSON object per line, until end of input, calling `on_event` with
/// each. A line that is not an event (garbage, an event of a newer VMM, a line over
/// [`MAX_EVENT_LINE`]) is skipped with a warning. Returns the read error that ended the
/// input, if one did.
pub fn read_events(input: impl Read, mut on_event: impl FnMut(VmmEvent)) -> std::io::Result<()> {
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = MAX_EVENT_LINE as u64 + 1;
        let n = (&mut reader).take(limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_EVENT_LINE {
            tracing::warn!("VMM event line over {MAX_EVENT_LINE} bytes; skipped");
            skip_line(&mut reader)?;
            continue;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<VmmEvent>(text) {
            Ok(event) => on_event(event),
            Err(e) => tracing::warn!(
                "not a VMM event, skipped ({e}): {}",
                String::from_utf8_lossy(&text[..text.len().min(200)])
            ),
        }
    }
}

/// Reads up to and including the next newline (or to the end of input).
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                reader.consume(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test reads back after the sink (which owns it) wrote.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Fails every write, counting the attempts.
    #[derive(Clone, Default)]
    struct Broken(Arc<Mutex<usize>>);

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            *self.0.lock().unwrap() += 1;
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn all_kinds() -> Vec<VmmEvent> {
        vec![
            VmmEvent::Started { pid: 42 },
            VmmEvent::Running,
            VmmEvent::BootSignal { ms: 412.9 },
            VmmEvent::Exited {
                reason: "the guest rebooted".into(),
                clean: true,
                first_output_ms: Some(84.1),
                boot_signal_ms: None,
                total_ms: 530.0,
            },
            VmmEvent::Failed {
                message: "no KVM".into(),
            },
        ]
    }

    #[test]
    fn events_are_one_json_object_per_line_and_read_back() {
        let out = Shared::default();
        let sink = EventSink::new(out.clone());
        for e in all_kinds() {
            sink.emit(&e);
        }
        let bytes = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], r#"{"event":"started","pid":42}"#);
        assert_eq!(lines[1], r#"{"event":"running"}"#);
        assert_eq!(lines[2], r#"{"event":"boot_signal","ms":412.9}"#);
        let mut back = Vec::new();
        read_events(bytes.as_slice(), |e| back.push(e)).unwrap();
        assert_eq!(back, all_kinds());
    }

    #[test]
    fn an_exit_becomes_an_exited_event_in_ms() {
        let times = BootTimes {
            vcpus_started: Some(Duration::from_millis(30)),
            first_output: Some(Duration::from_millis(84)),
            boot_signal: None,
            total: Duration::from_millis(530),
        };
        assert_eq!(
            VmmEvent::exited(&GuestExit::Reboot, &times),
            VmmEvent::Exited {
                reason: GuestExit::Reboot.to_string(),
                clean: true,
                first_output_ms: Some(84.0),
                boot_signal_ms: None,
                total_ms: 530.0,
            }
        );
        let fault = VmmEvent::exited(
            &GuestExit::TripleFault {
                vcpu: 1,
                fault: Default::default(),
            },
            &times,
        );
        assert!(matches!(fault, VmmEvent::Exited { clean: false, .. }));
    }

    #[test]
    fn a_sink_whose_reader_went_away_goes_quiet_after_the_first_error() {
        let broken = Broken::default();
        let sink = EventSink::new(broken.clone());
        sink.emit(&VmmEvent::Running);
        sink.emit(&VmmEvent::BootSignal { ms: 1.0 });
        sink.emit(&VmmEvent::Running);
        assert_eq!(*broken.0.lock().unwrap(), 1);
        EventSink::discard().emit(&VmmEvent::Running);
    }

    #[test]
    fn a_closed_pipe_is_not_fatal() {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let sink = EventSink::new(std::fs::File::from(w));
        // Rust ignores SIGPIPE, so this is EPIPE, logged once.
        sink.emit(&VmmEvent::Running);
        sink.emit(&VmmEvent::Running);
    }

    #[test]
    fn an_inherited_fd_must_be_open() {
        let err = EventSink::from_inherited_fd(987_654).unwrap_err();
        assert!(err.to_string().contains("--events-fd 987654"), "{err}");
        let (r, w) = nix::unistd::pipe().unwrap();
        let sink = {
            use std::os::fd::AsRawFd;
            EventSink::from_inherited_fd(w.as_raw_fd()).unwrap()
        };
        drop(w);
        sink.emit(&VmmEvent::Started { pid: 7 });
        drop(sink);
        let mut back = Vec::new();
        read_events(std::fs::File::from(r), |e| back.push(e)).unwrap();
        assert_eq!(back, [VmmEvent::Started { pid: 7 }]);
    }

    #[test]
    fn garbage_lines_are_skipped_not_fatal() {
        let long = format!(
            "{{\"event\":\"failed\",\"message\":\"{}\"}}",
            "x".repeat(70_000)
        );
        let input = [
            "not json at all",
            "",
            r#"{"event":"running"}"#,
            r#"{"event":"teleported"}"#,
            r#"{"event":"started","pid":1,"extra":true}"#,
            r#"{"event":"boot_signal","ms":"soon"}"#,
            "\u{0}\u{1}\u{2}",
            &long,
            r#"[1,2,3]"#,
            r#"{"event":"boot_signal","ms":12.5}"#,
            r#"{"event":"exited","reason":"r","clean":false,"first_output_ms":null,"boot_signal_ms":null,"total_ms":3}"#,
        ]
        .join("\n");
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(b"\n\xff\xfe invalid utf-8\n{\"event\":\"running\"}");
        let mut back = Vec::new();
        read_events(bytes.as_slice(), |e| back.push(e)).unwrap();
        assert_eq!(
            back,
            [
                VmmEvent::Running,
                VmmEvent::BootSignal { ms: 12.5 },
                VmmEvent::Exited {
                    reason: "r".into(),
                    clean: false,
                    first_output_ms: None,
                    boot_signal_ms: None,
                    total_ms: 3.0
                },
                // The last line has no newline: it counts once the input ends.
                VmmEvent::Running,
            ]
        );
    }
}
