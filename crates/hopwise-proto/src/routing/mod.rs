//! Distance-vector routing in the spirit of Babel (RFC 8966): metrics, sequence numbers and the
//! route table with its feasibility condition. Pure data structures; the node drives them.

mod table;
mod zones;

pub use table::{Offer, RouteTable, Selected, SeqnoWanted};
pub use zones::ZoneConfig;

/// A path cost in tenths of a millisecond of round-trip time; `INFINITY` means unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Metric(pub u16);

impl Metric {
    pub const ZERO: Metric = Metric(0);
    pub const INFINITY: Metric = Metric(u16::MAX);
    /// The largest finite metric (6.5 s).
    const MAX_FINITE: u16 = u16::MAX - 1;

    pub fn from_ms(ms: f64) -> Metric {
        if !ms.is_finite() {
            return Metric::INFINITY;
        }
        Metric((ms * 10.0).round().clamp(0.0, f64::from(Self::MAX_FINITE)) as u16)
    }

    pub fn as_ms(self) -> f64 {
        f64::from(self.0) / 10.0
    }

    pub fn is_infinite(self) -> bool {
        self == Metric::INFINITY
    }

    /// Path composition: saturates at the largest finite metric, and infinity absorbs.
    pub fn plus(self, other: Metric) -> Metric {
        if self.is_infinite() || other.is_infinite() {
            return Metric::INFINITY;
        }
        Metric(self.0.saturating_add(other.0).min(Self::MAX_FINITE))
    }
}

/// A destination's sequence number, compared modulo 2^16 (RFC 8966 §3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seqno(pub u16);

impl Seqno {
    pub fn is_newer_than(self, other: Seqno) -> bool {
        let distance = self.0.wrapping_sub(other.0);
        distance != 0 && distance < 0x8000
    }

    pub fn next(self) -> Seqno {
        Seqno(self.0.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqnos_compare_modulo_2_16() {
        assert!(Seqno(1).is_newer_than(Seqno(0)));
        assert!(!Seqno(0).is_newer_than(Seqno(1)));
        assert!(!Seqno(5).is_newer_than(Seqno(5)));
        assert!(Seqno(2).is_newer_than(Seqno(u16::MAX)));
        assert_eq!(Seqno(u16::MAX).next(), Seqno(0));
    }

    #[test]
    fn metrics_saturate_and_infinity_absorbs() {
        assert_eq!(Metric::from_ms(12.34), Metric(123));
        assert_eq!(Metric::from_ms(1e9), Metric(u16::MAX - 1));
        assert_eq!(Metric::from_ms(f64::NAN), Metric::INFINITY);
        assert_eq!(Metric(u16::MAX - 2).plus(Metric(5)), Metric(u16::MAX - 1));
        assert_eq!(Metric(3).plus(Metric::INFINITY), Metric::INFINITY);
        assert_eq!(Metric(3).plus(Metric(4)), Metric(7));
    }
}
