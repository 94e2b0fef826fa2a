//! Rate limiting for log lines that a guest can trigger at will.

/// Decides which occurrences of one repeatable event get logged.
///
/// A guest can hammer an unimplemented register millions of times a second;
/// logging each access would flood the host's log, while logging only the first
/// would hide that it keeps happening. Logging occurrences 1, 2, 4, 8, ... keeps
/// both the news and a logarithmic volume.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    count: u64,
}

impl LogLimiter {
    /// A limiter that has seen nothing yet.
    pub(crate) const fn new() -> Self {
        Self { count: 0 }
    }

    /// Counts one occurrence and returns its 1-based number if it should be logged.
    pub(crate) fn tick(&mut self) -> Option<u64> {
        self.count = self.count.saturating_add(1);
        self.count.is_power_of_two().then_some(self.count)
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
}
