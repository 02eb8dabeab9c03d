//! The simulated Internet between nodes: a seeded component that decides, for each datagram,
//! whether it arrives and after how long.
//!
//! One-way delay is half the matrix RTT in the direction of travel, so an asymmetric matrix
//! gives asymmetric paths and a probe's round trip is `(rtt(a,b) + rtt(b,a)) / 2`. Pairs the
//! matrix leaves empty have no direct path: their datagrams vanish. On top of the matrix:
//! optional jitter (an exponentially distributed extra delay) and random loss; a forbidden
//! fraction of pairs (`restrict`); NATed nodes that accept a datagram only from a node they sent
//! to first, and never from another NATed node; and a schedule of matrices that replace each
//! other every `matrix_interval` (time-varying latency).

use std::collections::HashSet;

use hopwise_proto::{Duration, Instant};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::matrix::Matrix;

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Mean of the extra per-datagram delay, in milliseconds (0 = none).
    pub jitter_ms: f64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Fraction of node pairs that cannot reach each other directly.
    pub restrict: f64,
    /// Fraction of nodes behind a NAT.
    pub nat: f64,
    /// With several matrices, each is in force for this long, in turn.
    pub matrix_interval: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            jitter_ms: 0.0,
            loss: 0.0,
            restrict: 0.0,
            nat: 0.0,
            matrix_interval: Duration::from_secs(60),
        }
    }
}

pub struct Network {
    matrices: Vec<Matrix>,
    config: NetworkConfig,
    rng: ChaCha8Rng,
    /// Bit `i * n + j` set: `i` and `j` cannot reach each other directly.
    forbidden: Vec<u64>,
    natted: Vec<bool>,
    /// (NATed node, peer) pairs where the NATed node sent first, opening its mapping.
    opened: HashSet<(u32, u32)>,
    /// While partitioned, each node's side; datagrams do not cross sides.
    sides: Option<Vec<bool>>,
}

impl Network {
    /// `matrices` are all of the same size; the first is in force from time zero.
    pub fn new(matrices: Vec<Matrix>, config: NetworkConfig, seed: u64) -> Self {
        assert!(!matrices.is_empty(), "a network needs a matrix");
        let n = matrices[0].len();
        assert!(
            matrices.iter().all(|m| m.len() == n),
            "all matrices must have the same size"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut forbidden = vec![0u64; (n * n).div_ceil(64)];
        if config.restrict > 0.0 {
            let restrict = config.restrict.min(1.0);
            for i in 0..n {
                for j in i + 1..n {
                    if rng.random_bool(restrict) {
                        for bit in [i * n + j, j * n + i] {
                            forbidden[bit / 64] |= 1 << (bit % 64);
                        }
                    }
                }
            }
        }
        let nat = config.nat.clamp(0.0, 1.0);
        let natted = (0..n).map(|_| nat > 0.0 && rng.random_bool(nat)).collect();
        Self {
            matrices,
            config,
            rng,
            forbidden,
            natted,
            opened: HashSet::new(),
            sides: None,
        }
    }

    /// Cuts the direct path between `a` and `b` for good, in both directions.
    pub fn cut(&mut self, a: usize, b: usize) {
        let n = self.len();
        for bit in [a * n + b, b * n + a] {
            self.forbidden[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// Splits the network: nodes with `side[i]` true cannot exchange datagrams with the others.
    pub fn partition(&mut self, side: Vec<bool>) {
        assert_eq!(side.len(), self.len());
        self.sides = Some(side);
    }

    pub fn heal(&mut self) {
        self.sides = None;
    }

    pub fn len(&self) -> usize {
        self.matrices[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The matrix in force at `now`; the schedule repeats after the last one.
    pub fn matrix_at(&self, now: Instant) -> &Matrix {
        let interval = self.config.matrix_interval.as_micros().max(1);
        let slot = (now.as_micros().max(0) / interval) as usize;
        &self.matrices[slot % self.matrices.len()]
    }

    pub fn is_natted(&self, node: usize) -> bool {
        self.natted[node]
    }

    fn is_forbidden(&self, from: usize, to: usize) -> bool {
        let bit = from * self.len() + to;
        self.forbidden[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Whether `from` and `to` can exchange datagrams at all once the right side speaks first:
    /// a matrix entry, not forbidden, not both behind NATs.
    pub fn path_allowed(&self, matrix: &Matrix, from: usize, to: usize) -> bool {
        matrix.rtt_ms(from, to).is_some()
            && !self.is_forbidden(from, to)
            && !(self.natted[from] && self.natted[to])
    }

    /// Whether `from` can open contact with `to` (a bootstrap address must be such a node).
    pub fn can_initiate(&self, from: usize, to: usize) -> bool {
        let matrix = &self.matrices[0];
        self.path_allowed(matrix, from, to)
            && self.path_allowed(matrix, to, from)
            && !self.natted[to]
    }

    /// The delay of one datagram from `from` to `to` sent at `now`, or `None` if it is lost.
    pub fn transit(&mut self, from: usize, to: usize, now: Instant) -> Option<Duration> {
        let rtt = self.matrix_at(now).rtt_ms(from, to)?;
        if self.is_forbidden(from, to) || (self.natted[from] && self.natted[to]) {
            return None;
        }
        if self
            .sides
            .as_ref()
            .is_some_and(|side| side[from] != side[to])
        {
            return None;
        }
        if self.natted[from] {
            self.opened.insert((from as u32, to as u32));
        }
        if self.natted[to] && !self.opened.contains(&(to as u32, from as u32)) {
            return None;
        }
        if self.config.loss > 0.0 && self.rng.random_bool(self.config.loss.min(1.0)) {
            return None;
        }
        let mut one_way = rtt / 2.0;
        if self.config.jitter_ms > 0.0 {
            let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
            one_way += -uniform.ln() * self.config.jitter_ms;
        }
        Some(Duration::from_millis_f64(one_way))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_nodes() -> Matrix {
        Matrix::from_rows(vec![vec![None, Some(20.0)], vec![Some(30.0), None]]).unwrap()
    }

    fn network(matrix: Matrix, config: NetworkConfig) -> Network {
        Network::new(vec![matrix], config, 1)
    }

    #[test]
    fn one_way_delay_is_half_the_directed_rtt() {
        let mut net = network(two_nodes(), NetworkConfig::default());
        assert_eq!(
            net.transit(0, 1, Instant::ZERO),
            Some(Duration::from_millis(10))
        );
        assert_eq!(
            net.transit(1, 0, Instant::ZERO),
            Some(Duration::from_millis(15))
        );
    }

    #[test]
    fn empty_entries_have_no_path() {
        let m = Matrix::from_rows(vec![vec![None, None], vec![Some(30.0), None]]).unwrap();
        let mut net = network(m, NetworkConfig::default());
        assert_eq!(net.transit(0, 1, Instant::ZERO), None);
        assert!(net.transit(1, 0, Instant::ZERO).is_some());
    }

    #[test]
    fn loss_and_jitter_follow_their_settings() {
        let config = NetworkConfig {
            jitter_ms: 2.0,
            loss: 0.25,
            ..NetworkConfig::default()
        };
        let mut net = network(two_nodes(), config);
        let delays: Vec<Option<Duration>> = (0..10_000)
            .map(|_| net.transit(0, 1, Instant::ZERO))
            .collect();
        let delivered: Vec<f64> = delays.iter().flatten().map(|d| d.as_millis_f64()).collect();
        let loss = 1.0 - delivered.len() as f64 / delays.len() as f64;
        assert!((loss - 0.25).abs() < 0.02, "loss {loss}");
        let mean_extra = delivered.iter().map(|d| d - 10.0).sum::<f64>() / delivered.len() as f64;
        assert!((mean_extra - 2.0).abs() < 0.1, "mean jitter {mean_extra}");
        assert!(delivered.iter().all(|&d| d >= 10.0));
    }

    fn full(n: usize, rtt: f64) -> Matrix {
        Matrix::from_rows(
            (0..n)
                .map(|i| (0..n).map(|j| (i != j).then_some(rtt)).collect())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn restricted_pairs_are_symmetric_and_about_the_asked_fraction() {
        let config = NetworkConfig {
            restrict: 0.5,
            ..NetworkConfig::default()
        };
        let mut net = network(full(60, 10.0), config);
        let mut blocked = 0;
        for i in 0..60 {
            for j in i + 1..60 {
                let forward = net.transit(i, j, Instant::ZERO).is_none();
                assert_eq!(forward, net.transit(j, i, Instant::ZERO).is_none());
                blocked += usize::from(forward);
            }
        }
        let fraction = blocked as f64 / (60.0 * 59.0 / 2.0);
        assert!((fraction - 0.5).abs() < 0.05, "blocked {fraction}");
    }

    #[test]
    fn natted_nodes_accept_only_nodes_they_contacted_and_never_each_other() {
        let config = NetworkConfig {
            nat: 0.5,
            ..NetworkConfig::default()
        };
        let mut net = network(full(40, 10.0), config);
        let natted: Vec<usize> = (0..40).filter(|&i| net.is_natted(i)).collect();
        let public: Vec<usize> = (0..40).filter(|&i| !net.is_natted(i)).collect();
        assert!(natted.len() >= 2 && public.len() >= 2);
        let (a, b, p) = (natted[0], natted[1], public[0]);
        assert!(net.transit(p, a, Instant::ZERO).is_none(), "unsolicited");
        assert!(net.transit(a, p, Instant::ZERO).is_some());
        assert!(
            net.transit(p, a, Instant::ZERO).is_some(),
            "after a spoke first"
        );
        assert!(net.transit(a, b, Instant::ZERO).is_none());
        assert!(net.transit(b, a, Instant::ZERO).is_none());
        assert!(net.can_initiate(a, p) && !net.can_initiate(p, a));
    }

    #[test]
    fn matrices_take_turns() {
        let config = NetworkConfig {
            matrix_interval: Duration::from_secs(60),
            ..NetworkConfig::default()
        };
        let mut net = Network::new(vec![full(2, 10.0), full(2, 40.0)], config, 1);
        let at = |s| Instant::ZERO + Duration::from_secs(s);
        assert_eq!(net.transit(0, 1, at(59)), Some(Duration::from_millis(5)));
        assert_eq!(net.transit(0, 1, at(60)), Some(Duration::from_millis(20)));
        assert_eq!(net.transit(0, 1, at(125)), Some(Duration::from_millis(5)));
    }
}
