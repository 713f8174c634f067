//! `cargo xtask bench NAME`: benchmarks whose figures are written to target/bench/.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

mod filter_overhead;
mod host_runner;
mod migration;
mod model;
mod xds_fanout;

/// The benches `run` knows, for the error on an unknown name.
const KNOWN: &[&str] = &[
    "filter-overhead",
    "host-runner",
    "migration",
    "model",
    "xds-fanout",
];

/// Runs the bench called `name`.
pub fn run(root: &Path, name: &str) -> Result<()> {
    let bench = match name {
        "filter-overhead" => filter_overhead::run,
        "host-runner" => host_runner::run,
        "migration" => migration::run,
        "model" => model::run,
        "xds-fanout" => xds_fanout::run,
        _ => bail!(
            "unknown bench `{name}`: known benches are {}",
            KNOWN.join(", ")
        ),
    };
    let out = root.join("target/bench");
    fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
    bench(root)
}

/// Criterion's estimates of `bench` from its last run, with the file they came from
/// (target/criterion/BENCH/new/estimates.json).
fn criterion_estimates(
    root: &Path,
    bench: &str,
) -> Result<(std::path::PathBuf, serde_json::Value)> {
    let path = root
        .join("target/criterion")
        .join(bench)
        .join("new/estimates.json");
    let v = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    Ok((path, v))
}
