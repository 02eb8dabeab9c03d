//! Shared helpers of the tests that run real `hopwise node` processes.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};

use hopwise_sim::{Matrix, Unit};

const CITIES: &str = include_str!("../../data/cities30.csv");

/// The `hopwise` binary built for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_hopwise"))
}

/// An empty scratch directory for one test of this process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hopwise-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The first `n` cities of the bundled WonderNetwork matrix.
pub fn cities(n: usize) -> Matrix {
    Matrix::parse(CITIES, Unit::Milliseconds)
        .expect("bundled matrix")
        .truncated(n)
}
