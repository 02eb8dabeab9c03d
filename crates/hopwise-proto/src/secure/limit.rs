//! Rate limits on handshakes from strangers: a token bucket per source (hashed into a fixed
//! array, so a flood of sources allocates nothing) and one for all sources together.

use std::hash::BuildHasher;
use std::net::IpAddr;

use crate::Instant;
use crate::keyed::HashKey;

const SOURCE_BUCKETS: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate_per_s: f64, burst: f64) -> bool {
        let elapsed = now.saturating_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_s).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    per_source: Box<[Bucket; SOURCE_BUCKETS]>,
    overall: Bucket,
    hash_key: HashKey,
}

/// Handshakes a source may start per second, and in a burst.
const SOURCE_RATE: f64 = 10.0;
const SOURCE_BURST: f64 = 20.0;
/// Handshakes all sources together may start per second, and in a burst.
const OVERALL_RATE: f64 = 200.0;
const OVERALL_BURST: f64 = 400.0;

impl HandshakeLimiter {
    pub fn new(hash_key: HashKey, now: Instant) -> Self {
        let full = |burst| Bucket {
            tokens: burst,
            updated: now,
        };
        Self {
            per_source: Box::new([full(SOURCE_BURST); SOURCE_BUCKETS]),
            overall: full(OVERALL_BURST),
            hash_key,
        }
    }

    /// Whether a handshake from `source` may be answered now.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let slot = (self.hash_key.hash_one(source) as usize) % SOURCE_BUCKETS;
        self.per_source[slot].take(now, SOURCE_RATE, SOURCE_BURST)
            && self.overall.take(now, OVERALL_RATE, OVERALL_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Duration;

    #[test]
    fn a_flooding_source_is_cut_to_its_rate_and_others_still_get_in() {
        let now = Instant::ZERO;
        let mut limiter = HandshakeLimiter::new(crate::keyed::hash_key(1), now);
        let flooder: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..1_000).filter(|_| limiter.allow(flooder, now)).count();
        assert_eq!(allowed, SOURCE_BURST as usize);
        let later = now + Duration::from_secs(1);
        let allowed = (0..1_000).filter(|_| limiter.allow(flooder, later)).count();
        assert_eq!(allowed, SOURCE_RATE as usize);
        // Sources that hash elsewhere are unaffected.
        let others = (1..=50u8)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .filter(|ip| limiter.allow(*ip, later))
            .count();
        assert!(others >= 40, "{others} of 50 other sources got in");
    }
}
