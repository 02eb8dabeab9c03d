//! Shared helpers of the tests that run real `hopwise node` processes.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// Round trips in ms between four members: two relays (0, and 3 farther) between member 1
/// and member 2, which have no direct path.
pub fn two_relays() -> Matrix {
    let rows: [[f64; 4]; 4] = [
        [0.0, 4.0, 4.0, 3.0],
        [4.0, 0.0, -1.0, 6.0],
        [4.0, -1.0, 0.0, 6.0],
        [3.0, 6.0, 6.0, 0.0],
    ];
    Matrix::from_rows(
        rows.iter()
            .map(|row| row.iter().map(|&ms| (ms > 0.0).then_some(ms)).collect())
            .collect(),
    )
    .expect("a square matrix")
}

/// The first `n` cities of the bundled WonderNetwork matrix.
pub fn cities(n: usize) -> Matrix {
    Matrix::parse(CITIES, Unit::Milliseconds)
        .expect("bundled matrix")
        .truncated(n)
}

/// A server process that is killed when the test is done with it, or fails.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server program (`args[0]` with the rest), quiet, and gives it time to bind.
pub fn spawn(args: &[&str]) -> Server {
    let child = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("{}: {error}", args[0]));
    std::thread::sleep(Duration::from_millis(500));
    Server(child)
}

/// Whether a program is installed (on the PATH, or in /usr/sbin).
pub fn installed(program: &str) -> bool {
    let found = |dir: &Path| dir.join(program).is_file();
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| found(&dir)))
        || found(Path::new("/usr/sbin"))
}
