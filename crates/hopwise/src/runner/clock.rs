//! The runner's clock: protocol time is microseconds since the runner started.
//!
//! It reads `tokio::time::Instant`, so a test that pauses tokio's clock controls the node's
//! time as well as its timers.

use hopwise_proto::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Instant {
        let elapsed = self.origin.elapsed().as_micros();
        Instant::from_micros(i64::try_from(elapsed).unwrap_or(i64::MAX))
    }

    /// The moment a protocol deadline falls due; a deadline too far off to represent means
    /// "not in this process's lifetime".
    pub fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        let micros = u64::try_from(at.as_micros()).unwrap_or(0);
        const FAR: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);
        let offset = std::time::Duration::from_micros(micros).min(FAR);
        self.origin + offset
    }
}
