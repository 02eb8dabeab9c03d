//! Latency matrices: the measured round-trip times the simulator replays.
//!
//! Accepted formats:
//! * a square text matrix, whitespace- or comma-separated, with an optional header row of names
//!   (and then optionally a name in front of every row);
//! * a JSON map `{"src": {"dst": rtt}}` (names sorted, missing entries = no path).
//!
//! Off-diagonal entries that are 0, empty, NaN or negative mean "no direct path". The diagonal is
//! ignored (a node does not measure itself).

use std::path::Path;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    Seconds,
}

impl Unit {
    fn to_ms(self, value: f64) -> f64 {
        match self {
            Unit::Milliseconds => value,
            Unit::Seconds => value * 1_000.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the matrix is empty")]
    Empty,
    #[error("row {row} has {found} entries, expected {expected}")]
    NotSquare {
        row: usize,
        found: usize,
        expected: usize,
    },
    #[error("row {row}, column {column}: {token:?} is not a number")]
    BadNumber {
        row: usize,
        column: usize,
        token: String,
    },
    #[error("invalid JSON matrix: {0}")]
    Json(String),
}

/// An `n x n` RTT matrix in milliseconds; `rtt_ms(i, j)` is what `i` measures to `j`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    names: Vec<String>,
    /// Row-major; `NaN` where there is no direct path. Empty for an expanded matrix.
    rtt_ms: Vec<f64>,
    expanded: Option<Box<Expanded>>,
}

/// A large matrix built from a real one: every node sits behind one real host with its own
/// access delay, and `rtt(a, b) = rtt(host a, host b) + access a + access b`. Stored as the
/// host matrix plus one host and delay per node, so 10,000 nodes cost kilobytes, not a dense
/// 800 MB table.
#[derive(Debug, Clone, PartialEq)]
struct Expanded {
    hosts: Matrix,
    host_of: Vec<u32>,
    access_ms: Vec<f64>,
}

/// What an expanded matrix was built from (reported as `expanded_from`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expansion {
    pub hosts: usize,
    pub access_ms_min: f64,
    pub access_ms_max: f64,
}

/// Access delays of synthetic nodes, drawn uniformly in this range (ms).
pub const ACCESS_MS: std::ops::RangeInclusive<f64> = 1.0..=20.0;

impl Matrix {
    pub fn load(path: &Path, unit: Unit) -> Result<Matrix, MatrixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, unit)
    }

    pub fn parse(text: &str, unit: Unit) -> Result<Matrix, MatrixError> {
        if text.trim_start().starts_with('{') {
            Self::parse_json(text, unit)
        } else {
            Self::parse_table(text, unit)
        }
    }

    /// Builds a matrix from rows of optional RTTs (tests, generators).
    pub fn from_rows(rows: Vec<Vec<Option<f64>>>) -> Result<Matrix, MatrixError> {
        let n = rows.len();
        let mut rtt_ms = Vec::with_capacity(n * n);
        for (row, values) in rows.into_iter().enumerate() {
            if values.len() != n {
                return Err(MatrixError::NotSquare {
                    row,
                    found: values.len(),
                    expected: n,
                });
            }
            rtt_ms.extend(values.into_iter().map(|v| v.unwrap_or(f64::NAN)));
        }
        Self::build((0..n).map(|i| i.to_string()).collect(), rtt_ms)
    }

    fn build(names: Vec<String>, mut rtt_ms: Vec<f64>) -> Result<Matrix, MatrixError> {
        let n = names.len();
        if n == 0 {
            return Err(MatrixError::Empty);
        }
        for (index, value) in rtt_ms.iter_mut().enumerate() {
            let usable = value.is_finite() && *value > 0.0;
            if index / n == index % n || !usable {
                *value = f64::NAN;
            }
        }
        Ok(Matrix {
            names,
            rtt_ms,
            expanded: None,
        })
    }

    /// An `n`-node matrix behind this one's hosts: node `k` sits behind host `k mod hosts`
    /// with a seeded access delay in [`ACCESS_MS`]; nodes behind one host reach each other
    /// through it (the host-to-host part is zero).
    pub fn expanded(&self, n: usize, seed: u64) -> Matrix {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6578_7061_6e64);
        let hosts = self.len();
        let host_of: Vec<u32> = (0..n).map(|k| (k % hosts) as u32).collect();
        let access_ms: Vec<f64> = (0..n).map(|_| rng.random_range(ACCESS_MS)).collect();
        let names = (0..n)
            .map(|k| format!("{}#{}", self.names[k % hosts], k / hosts))
            .collect();
        Matrix {
            names,
            rtt_ms: Vec::new(),
            expanded: Some(Box::new(Expanded {
                hosts: self.clone(),
                host_of,
                access_ms,
            })),
        }
    }

    /// Where an expanded matrix came from.
    pub fn expansion(&self) -> Option<Expansion> {
        let e = self.expanded.as_ref()?;
        let fold = |init: f64, f: fn(f64, f64) -> f64| e.access_ms.iter().copied().fold(init, f);
        Some(Expansion {
            hosts: e.hosts.len(),
            access_ms_min: fold(f64::INFINITY, f64::min),
            access_ms_max: fold(0.0, f64::max),
        })
    }

    fn parse_table(text: &str, unit: Unit) -> Result<Matrix, MatrixError> {
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(split_fields)
            .collect();
        let Some(first) = rows.first() else {
            return Err(MatrixError::Empty);
        };
        let has_header = first.iter().any(|t| !is_numeric_or_blank(t));
        let (header, body) = if has_header {
            (Some(first), &rows[1..])
        } else {
            (None, &rows[..])
        };
        let n = body.len();
        if n == 0 {
            return Err(MatrixError::Empty);
        }
        let mut names: Vec<String> = match header {
            // A header may start with an empty corner cell above a column of row names.
            Some(h) if h.len() == n + 1 => h[1..].iter().map(|s| s.to_string()).collect(),
            Some(h) => h.iter().map(|s| s.to_string()).collect(),
            None => (0..n).map(|i| i.to_string()).collect(),
        };
        if names.len() != n {
            return Err(MatrixError::NotSquare {
                row: 0,
                found: names.len(),
                expected: n,
            });
        }
        let mut rtt_ms = Vec::with_capacity(n * n);
        for (row, fields) in body.iter().enumerate() {
            let values = match fields.len() {
                len if len == n => &fields[..],
                len if len == n + 1 && !is_numeric_or_blank(fields[0]) => {
                    if header.is_none() {
                        names[row] = fields[0].to_string();
                    }
                    &fields[1..]
                }
                found => {
                    return Err(MatrixError::NotSquare {
                        row: row + usize::from(has_header),
                        found,
                        expected: n,
                    });
                }
            };
            for (column, token) in values.iter().enumerate() {
                let value = parse_entry(token).ok_or_else(|| MatrixError::BadNumber {
                    row: row + usize::from(has_header),
                    column,
                    token: token.to_string(),
                })?;
                rtt_ms.push(unit.to_ms(value));
            }
        }
        Self::build(names, rtt_ms)
    }

    fn parse_json(text: &str, unit: Unit) -> Result<Matrix, MatrixError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| MatrixError::Json(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(MatrixError::Json("top level is not an object".into()));
        };
        let mut names: Vec<String> = map.keys().cloned().collect();
        for row in map.values() {
            let Value::Object(row) = row else {
                return Err(MatrixError::Json("a row is not an object".into()));
            };
            names.extend(row.keys().cloned());
        }
        names.sort();
        names.dedup();
        let n = names.len();
        let mut rtt_ms = vec![f64::NAN; n * n];
        for (src, row) in &map {
            let i = names.binary_search(src).expect("every key was collected");
            let Value::Object(row) = row else {
                unreachable!("checked above")
            };
            for (dst, rtt) in row {
                let j = names.binary_search(dst).expect("every key was collected");
                let rtt = rtt
                    .as_f64()
                    .ok_or_else(|| MatrixError::Json(format!("{src} -> {dst} is not a number")))?;
                rtt_ms[i * n + j] = unit.to_ms(rtt);
            }
        }
        Self::build(names, rtt_ms)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// What `from` measures to `to`, or `None` where there is no direct path.
    pub fn rtt_ms(&self, from: usize, to: usize) -> Option<f64> {
        if let Some(e) = &self.expanded {
            if from == to {
                return None;
            }
            let (a, b) = (e.host_of[from] as usize, e.host_of[to] as usize);
            let core = if a == b { 0.0 } else { e.hosts.rtt_ms(a, b)? };
            return Some(core + e.access_ms[from] + e.access_ms[to]);
        }
        let value = self.rtt_ms[from * self.len() + to];
        (!value.is_nan()).then_some(value)
    }

    /// The first `n` nodes.
    pub fn truncated(&self, n: usize) -> Matrix {
        let n = n.min(self.len());
        if let Some(e) = &self.expanded {
            return Matrix {
                names: self.names[..n].to_vec(),
                rtt_ms: Vec::new(),
                expanded: Some(Box::new(Expanded {
                    hosts: e.hosts.clone(),
                    host_of: e.host_of[..n].to_vec(),
                    access_ms: e.access_ms[..n].to_vec(),
                })),
            };
        }
        let old = self.len();
        let rtt_ms = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| self.rtt_ms[i * old + j])
            .collect();
        Matrix {
            names: self.names[..n].to_vec(),
            rtt_ms,
            expanded: None,
        }
    }
}

fn split_fields(line: &str) -> Vec<&str> {
    if line.contains(',') {
        line.split(',').map(str::trim).collect()
    } else {
        line.split_whitespace().collect()
    }
}

fn is_numeric_or_blank(token: &str) -> bool {
    parse_entry(token).is_some()
}

/// A number, or "no path" (NaN) for an empty or NaN cell.
fn parse_entry(token: &str) -> Option<f64> {
    let token = token.trim();
    if token.is_empty() || token.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    token.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_matrix_without_header() {
        let m = Matrix::parse("0 10.5 20\n10 0 -1\n20 0 0\n", Unit::Milliseconds).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.rtt_ms(0, 1), Some(10.5));
        assert_eq!(m.rtt_ms(1, 0), Some(10.0));
        assert_eq!(m.rtt_ms(1, 2), None, "negative means no path");
        assert_eq!(m.rtt_ms(2, 1), None, "zero off the diagonal means no path");
        assert_eq!(m.rtt_ms(0, 0), None);
        assert_eq!(m.names(), ["0", "1", "2"]);
    }

    #[test]
    fn comma_matrix_with_header_names_and_seconds() {
        let m = Matrix::parse("a,b,c\n0,0.01,\n0.01,0,NaN\n0.2,0.03,0\n", Unit::Seconds).unwrap();
        assert_eq!(m.names(), ["a", "b", "c"]);
        assert_eq!(m.rtt_ms(0, 1), Some(10.0));
        assert_eq!(m.rtt_ms(0, 2), None, "empty cell");
        assert_eq!(m.rtt_ms(1, 2), None, "NaN cell");
        assert_eq!(m.rtt_ms(2, 0), Some(200.0));
    }

    #[test]
    fn header_with_row_names() {
        let m = Matrix::parse(",x,y\nx,0,5\ny,6,0\n", Unit::Milliseconds).unwrap();
        assert_eq!(m.names(), ["x", "y"]);
        assert_eq!(m.rtt_ms(1, 0), Some(6.0));
    }

    #[test]
    fn json_map() {
        let text = r#"{"b": {"a": 7.5, "b": 1.0}, "a": {"b": 8.0, "c": 3}}"#;
        let m = Matrix::parse(text, Unit::Milliseconds).unwrap();
        assert_eq!(m.names(), ["a", "b", "c"]);
        assert_eq!(m.rtt_ms(0, 1), Some(8.0));
        assert_eq!(m.rtt_ms(1, 0), Some(7.5));
        assert_eq!(m.rtt_ms(1, 1), None, "the diagonal is ignored");
        assert_eq!(m.rtt_ms(2, 0), None, "missing entry");
        assert_eq!(m.rtt_ms(0, 2), Some(3.0));
    }

    #[test]
    fn rejects_malformed_tables() {
        assert!(matches!(
            Matrix::parse("", Unit::Milliseconds),
            Err(MatrixError::Empty)
        ));
        assert!(matches!(
            Matrix::parse("0 1\n1 0 3\n", Unit::Milliseconds),
            Err(MatrixError::NotSquare { row: 1, .. })
        ));
        assert!(matches!(
            Matrix::parse("0 1\n1 x\n", Unit::Milliseconds),
            Err(MatrixError::BadNumber { .. })
        ));
        assert!(matches!(
            Matrix::parse("{\"a\": 3}", Unit::Milliseconds),
            Err(MatrixError::Json(_))
        ));
    }

    #[test]
    fn truncation_keeps_the_leading_block() {
        let m = Matrix::parse("0 1 2\n3 0 4\n5 6 0\n", Unit::Milliseconds).unwrap();
        let t = m.truncated(2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.rtt_ms(1, 0), Some(3.0));
        assert_eq!(t.rtt_ms(0, 1), Some(1.0));
    }
}
