//! The simulated Internet between nodes: a seeded component that decides, for each datagram,
//! whether it arrives and after how long.
//!
//! One-way delay is half the matrix RTT in the direction of travel, so an asymmetric matrix
//! gives asymmetric paths and a probe's round trip is `(rtt(a,b) + rtt(b,a)) / 2`. Pairs the
//! matrix leaves empty have no direct path: their datagrams vanish. Jitter (an exponentially
//! distributed extra delay) and random loss are optional.

use hopwise_proto::Duration;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::matrix::Matrix;

#[derive(Debug, Clone, Default)]
pub struct NetworkConfig {
    /// Mean of the extra per-datagram delay, in milliseconds (0 = none).
    pub jitter_ms: f64,
    /// Probability that a datagram is lost.
    pub loss: f64,
}

pub struct Network {
    matrix: Matrix,
    config: NetworkConfig,
    rng: ChaCha8Rng,
}

impl Network {
    pub fn new(matrix: Matrix, config: NetworkConfig, seed: u64) -> Self {
        Self {
            matrix,
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn matrix(&self) -> &Matrix {
        &self.matrix
    }

    /// The delay of one datagram from `from` to `to`, or `None` if it is lost.
    pub fn transit(&mut self, from: usize, to: usize) -> Option<Duration> {
        let rtt = self.matrix.rtt_ms(from, to)?;
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

    #[test]
    fn one_way_delay_is_half_the_directed_rtt() {
        let mut net = Network::new(two_nodes(), NetworkConfig::default(), 1);
        assert_eq!(net.transit(0, 1), Some(Duration::from_millis(10)));
        assert_eq!(net.transit(1, 0), Some(Duration::from_millis(15)));
    }

    #[test]
    fn empty_entries_have_no_path() {
        let m = Matrix::from_rows(vec![vec![None, None], vec![Some(30.0), None]]).unwrap();
        let mut net = Network::new(m, NetworkConfig::default(), 1);
        assert_eq!(net.transit(0, 1), None);
        assert!(net.transit(1, 0).is_some());
    }

    #[test]
    fn loss_and_jitter_follow_their_settings() {
        let config = NetworkConfig {
            jitter_ms: 2.0,
            loss: 0.25,
        };
        let mut net = Network::new(two_nodes(), config, 9);
        let delays: Vec<Option<Duration>> = (0..10_000).map(|_| net.transit(0, 1)).collect();
        let delivered: Vec<f64> = delays.iter().flatten().map(|d| d.as_millis_f64()).collect();
        let loss = 1.0 - delivered.len() as f64 / delays.len() as f64;
        assert!((loss - 0.25).abs() < 0.02, "loss {loss}");
        let mean_extra = delivered.iter().map(|d| d - 10.0).sum::<f64>() / delivered.len() as f64;
        assert!((mean_extra - 2.0).abs() < 0.1, "mean jitter {mean_extra}");
        assert!(delivered.iter().all(|&d| d >= 10.0));
    }
}
