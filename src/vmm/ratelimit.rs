//! Rate limits for log lines a guest can cause: a driver that loops on a bad queue setup and
//! a reset, or keeps breaking a queue, would otherwise make the VMM write a warning per
//! round into `vmm.log` on the host (which is capped as well, see [`crate::logfile`]).
//!
//! Each call site of [`limited!`] has its own [`RateLimit`]: [`BURST`] lines per
//! [`WINDOW`] get through, the rest are counted, and the next line that gets through says how
//! many were suppressed before it (a `suppressed=N` field), as Firecracker's rate-limited
//! logging does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per call site and window that [`limited!`] lets through.
pub const BURST: u32 = 10;
/// The window [`BURST`] applies to.
pub const WINDOW: Duration = Duration::from_secs(1);

/// At most `burst` events per `window`; events past that are counted.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    admitted: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(burst: u32, window: Duration) -> Self {
        RateLimit {
            burst,
            window,
            state: Mutex::new(Window {
                start: None,
                admitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether an event now may pass: `Some(n)` with the number of events suppressed since
    /// the last one that passed, or `None` if this one is suppressed.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`Self::check`] at a given time (tests).
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        // A panic elsewhere while holding the lock leaves counters, which are fine to reuse.
        let mut w = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let expired = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            w.start = Some(now);
            w.admitted = 0;
        }
        if w.admitted < self.burst {
            w.admitted += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            None
        }
    }
}

/// `tracing::<level>!` with a [`RateLimit`] of [`BURST`] lines per [`WINDOW`] for this call
/// site: `limited!(warn, "{name}: ...")`. For lines a guest can cause again and again.
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::vmm::ratelimit::RateLimit = $crate::vmm::ratelimit::RateLimit::new(
            $crate::vmm::ratelimit::BURST,
            $crate::vmm::ratelimit::WINDOW,
        );
        match LIMIT.check() {
            Some(0) => tracing::$level!($($arg)+),
            Some(suppressed) => tracing::$level!(suppressed, $($arg)+),
            None => {}
        }
    }};
}
pub(crate) use limited;

/// What `f` logs on this thread (info and up), as text: for tests that count lines.
#[cfg(test)]
pub(crate) fn capture_logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || out.clone())
        .without_time()
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_until_the_window_ends() {
        let limit = RateLimit::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limit.check_at(at(0)), Some(0));
        assert_eq!(limit.check_at(at(1)), Some(0));
        assert_eq!(limit.check_at(at(2)), Some(0));
        for ms in 3..500 {
            assert_eq!(limit.check_at(at(ms)), None);
        }
        // The next window: the first line tells how many were suppressed.
        assert_eq!(limit.check_at(at(1000)), Some(497));
        assert_eq!(limit.check_at(at(1001)), Some(0));
        // A clock that goes backwards does not reopen the window.
        assert_eq!(limit.check_at(at(1002)), Some(0));
        assert_eq!(limit.check_at(at(10)), None);
    }

    #[test]
    fn the_macro_limits_each_call_site() {
        let text = capture_logs(|| {
            for i in 0..1000 {
                limited!(warn, "flood {i}");
            }
            limited!(warn, "another site");
        });
        let floods = text.lines().filter(|l| l.contains("flood")).count();
        // The loop may straddle a window boundary on a slow machine.
        assert!((1..=2 * BURST as usize).contains(&floods), "{text}");
        assert_eq!(text.matches("another site").count(), 1, "{text}");
    }
}
