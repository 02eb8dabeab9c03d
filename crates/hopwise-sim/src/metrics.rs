//! How good the overlay's view of the network is, measured against the matrix.

use hopwise_proto::Coordinate;
use serde::Serialize;

use crate::matrix::Matrix;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub median_rel_error: f64,
    pub p90_rel_error: f64,
}

/// Relative error `|predicted - measured| / measured` of the coordinates over every ordered pair
/// the matrix has a measurement for.
pub fn coordinate_accuracy(matrix: &Matrix, coords: &[Coordinate]) -> Accuracy {
    let mut errors = Vec::with_capacity(coords.len() * coords.len());
    for (i, a) in coords.iter().enumerate() {
        for (j, b) in coords.iter().enumerate() {
            if let Some(measured) = matrix.rtt_ms(i, j) {
                errors.push((a.distance_ms(b) - measured).abs() / measured);
            }
        }
    }
    Accuracy {
        median_rel_error: percentile(&mut errors, 0.5),
        p90_rel_error: percentile(&mut errors, 0.9),
    }
}

/// Nearest-rank percentile (`q` in `[0, 1]`); NaN for an empty set.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.9), 5.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn accuracy_compares_every_measured_pair() {
        let m = Matrix::from_rows(vec![
            vec![None, Some(10.0), Some(20.0)],
            vec![Some(10.0), None, None],
            vec![Some(20.0), None, None],
        ])
        .unwrap();
        // Node 1 sits 10 ms away, node 2 only 15 ms away (25% short of 20 ms).
        let coords = [
            Coordinate::new(0.0, 0.0, 0.0),
            Coordinate::new(10.0, 0.0, 0.0),
            Coordinate::new(0.0, 15.0, 0.0),
        ];
        let accuracy = coordinate_accuracy(&m, &coords);
        assert_eq!(accuracy.median_rel_error, 0.0);
        assert_eq!(accuracy.p90_rel_error, 0.25);
    }
}
