//! What the benchmarks share: the tiny C child and percentiles.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `benches/tick.c` into `dir` with the system C compiler (`$CC`, else `cc`).
pub fn tick_binary(dir: &Path) -> PathBuf {
    let out = dir.join("tick");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tick.c");
    let ok = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) builds the benchmark child")
        .success();
    assert!(ok, "cc failed on {}", src.display());
    out
}

/// The nearest-rank percentile `p` (0–100) of sorted values, as the anchor harness computes it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}
