//! Rate limiting for log lines that a guest can trigger at will.

/// Decides which occurrences of one repeatable event get logged.
///
/// A guest can hammer an unimplemented register millions of times a second;
/// logging each access would flood the host's log, while logging only the first
/// would hide that it keeps happening. Logging occurrences 1, 2, 4, 8, ... keeps
/// both the news and a logarithmic volume.
#[derive(Debug, Default, Clone)]
pub struct LogLimiter {
    count: u64,
}

impl LogLimiter {
    /// A limiter that has seen nothing yet.
    pub const fn new() -> Self {
        Self { count: 0 }
    }

    /// Counts one occurrence and returns its 1-based number if it should be logged.
    pub fn tick(&mut self) -> Option<u64> {
        self.count = self.count.saturating_add(1);
        self.count.is_power_of_two().then_some(self.count)
    }
}

/// At most one log line per second for one kind of event; counts the rest.
///
/// For events whose timing matters more than their count (a device that keeps
/// failing while the guest runs on).
#[derive(Debug, Default)]
pub struct TimedLogLimiter {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl TimedLogLimiter {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// `Some(lines suppressed since the last one)` if a line may be logged now.
    pub fn check(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Self::INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_powers_of_two() {
        let mut l = LogLimiter::new();
        let logged: Vec<u64> = (0..20).filter_map(|_| l.tick()).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn timed_limiter_counts_what_it_suppresses() {
        let mut l = TimedLogLimiter::default();
        assert_eq!(l.check(), Some(0));
        assert_eq!(l.check(), None);
        assert_eq!(l.check(), None);
        l.last = Some(std::time::Instant::now() - std::time::Duration::from_secs(2));
        assert_eq!(l.check(), Some(2));
    }
}
