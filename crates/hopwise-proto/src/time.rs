//! Crate-owned time: the core never reads a clock, every instant is handed in by the driver.
//!
//! Microsecond resolution in an `i64`, so a simulation can start at zero and a runner can map its
//! monotonic clock onto the same scale.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// A point in time, in microseconds since an epoch chosen by the driver.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    micros: i64,
}

impl Instant {
    pub const ZERO: Instant = Instant { micros: 0 };
    /// Later than any deadline a node will ever set.
    pub const MAX: Instant = Instant { micros: i64::MAX };

    pub const fn from_micros(micros: i64) -> Self {
        Self { micros }
    }

    pub const fn as_micros(self) -> i64 {
        self.micros
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros((self.micros - earlier.micros).max(0))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.micros as f64 / 1e6)
    }
}

/// A non-negative span of time in microseconds.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    micros: i64,
}

impl Duration {
    pub const ZERO: Duration = Duration { micros: 0 };

    pub const fn from_micros(micros: i64) -> Self {
        Self { micros }
    }

    pub const fn from_millis(millis: i64) -> Self {
        Self {
            micros: millis * 1_000,
        }
    }

    pub const fn from_secs(secs: i64) -> Self {
        Self {
            micros: secs * 1_000_000,
        }
    }

    /// Rounds to the nearest microsecond; negative and non-finite inputs become zero.
    pub fn from_millis_f64(millis: f64) -> Self {
        if millis.is_finite() && millis > 0.0 {
            Self {
                micros: (millis * 1_000.0).round() as i64,
            }
        } else {
            Self::ZERO
        }
    }

    pub const fn as_micros(self) -> i64 {
        self.micros
    }

    pub fn as_millis_f64(self) -> f64 {
        self.micros as f64 / 1_000.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.micros as f64 / 1_000_000.0
    }

    /// Scales by a factor, for jittering timers.
    pub fn mul_f64(self, factor: f64) -> Self {
        Self::from_millis_f64(self.as_millis_f64() * factor)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}ms", self.as_millis_f64())
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant::from_micros(self.micros.saturating_add(rhs.micros))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant::from_micros(self.micros.saturating_sub(rhs.micros))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturates at zero: time in this crate never runs backwards.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, rhs: Duration) -> Duration {
        Duration::from_micros(self.micros.saturating_add(rhs.micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_going_negative() {
        let a = Instant::from_micros(1_000);
        let b = a + Duration::from_millis(2);
        assert_eq!(b.as_micros(), 3_000);
        assert_eq!((b - a).as_micros(), 2_000);
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!(Duration::from_millis_f64(f64::NAN), Duration::ZERO);
        assert_eq!(Duration::from_millis_f64(1.2345).as_micros(), 1_235);
    }
}
