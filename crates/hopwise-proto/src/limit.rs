//! Token buckets, and the rate limits on handshakes built of them: a token bucket per source
//! (hashed into a fixed array, so a flood of sources allocates nothing) and one for all
//! sources together. Pub/sub limits what a node publishes with a bucket of its own.
//!
//! The secure layer keys its buckets by the source IP of a hello; the end-to-end layer by the
//! member that handed it the handshake (the last hop, whom the secure layer authenticated).

use std::hash::{BuildHasher, Hash};

use crate::Instant;
use crate::keyed::HashKey;

const SOURCE_BUCKETS: usize = 256;

/// A token bucket, full when made.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            updated: now,
        }
    }

    /// Takes a token if there is one at `rate`.
    pub fn take(&mut self, now: Instant, rate: Rate) -> bool {
        let elapsed = now.saturating_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A sustained rate per second and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    per_source: Box<[Bucket; SOURCE_BUCKETS]>,
    overall: Bucket,
    source_rate: Rate,
    overall_rate: Rate,
    hash_key: HashKey,
}

impl HandshakeLimiter {
    pub fn new(source_rate: Rate, overall_rate: Rate, hash_key: HashKey, now: Instant) -> Self {
        Self {
            per_source: Box::new([Bucket::full(source_rate, now); SOURCE_BUCKETS]),
            overall: Bucket::full(overall_rate, now),
            source_rate,
            overall_rate,
            hash_key,
        }
    }

    /// Whether a handshake from `source` may be answered now.
    pub fn allow(&mut self, source: impl Hash, now: Instant) -> bool {
        let slot = (self.hash_key.hash_one(source) as usize) % SOURCE_BUCKETS;
        self.per_source[slot].take(now, self.source_rate)
            && self.overall.take(now, self.overall_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Duration;
    use std::net::IpAddr;

    #[test]
    fn a_flooding_source_is_cut_to_its_rate_and_others_still_get_in() {
        let source = Rate {
            per_second: 10.0,
            burst: 20.0,
        };
        let overall = Rate {
            per_second: 200.0,
            burst: 400.0,
        };
        let now = Instant::ZERO;
        let mut limiter = HandshakeLimiter::new(source, overall, crate::keyed::hash_key(1), now);
        let flooder: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..1_000).filter(|_| limiter.allow(flooder, now)).count();
        assert_eq!(allowed, 20);
        let later = now + Duration::from_secs(1);
        let allowed = (0..1_000).filter(|_| limiter.allow(flooder, later)).count();
        assert_eq!(allowed, 10);
        // Sources that hash elsewhere are unaffected.
        let others = (1..=50u8)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .filter(|ip| limiter.allow(*ip, later))
            .count();
        assert!(others >= 40, "{others} of 50 other sources got in");
    }
}
