//! `cargo xtask bench model`: the criterion benches of `crates/model/benches/model.rs`, with
//! their figures judged against the targets of issue 4 and written to target/bench/model.json.
//!
//! - `update_and_score`: one point through the detector (forecast, calibrated spread, score,
//!   model update) between refits; target 5 µs. `update_and_score_amortized` is the same
//!   stream with its refits every 288 points, reported beside it.
//! - `full_fit_4032`: `Forecaster::fit` on 14 days at 5 minutes, with its rolling-origin
//!   validation; target 20 ms.
//! - `nab/score_all`: every point of the shared NAB data set scored on one thread; target 2 s.
//!
//! Criterion's own estimates (`target/criterion/*/new/estimates.json`) are the source: the
//! mean with its 95% confidence interval. The machine is shared, so its load average is
//! recorded with the figures.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::filter_overhead::loadavg;
use crate::cmd;

/// (criterion id, target in nanoseconds, what it measures).
const BENCHES: [(&str, Option<f64>, &str); 4] = [
    (
        "update_and_score",
        Some(5_000.0),
        "one point updated and scored, between refits",
    ),
    (
        "update_and_score_amortized",
        None,
        "the same with the refits every 288 points spread over them",
    ),
    (
        "full_fit_4032",
        Some(20_000_000.0),
        "a full fit on 4,032 points (14 days at 5 minutes)",
    ),
    (
        "nab/score_all",
        Some(2_000_000_000.0),
        "the whole shared NAB data set scored, one core",
    ),
];

#[derive(Serialize)]
struct Figure {
    bench: &'static str,
    what: &'static str,
    mean_ns: f64,
    low_ns: f64,
    high_ns: f64,
    target_ns: Option<f64>,
    /// Whether the mean is within the target (none without a target).
    met: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    figures: Vec<Figure>,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures before and after.
    load_average_before: String,
    load_average_after: String,
}

/// Runs the benches and writes target/bench/model.json.
pub fn run(root: &Path) -> Result<()> {
    let before = loadavg();
    cmd::run(cmd::cargo().current_dir(root).args([
        "bench",
        "-p",
        "shadowplane-model",
        "--bench",
        "model",
    ]))?;
    let after = loadavg();
    let mut figures = Vec::new();
    for (bench, target, what) in BENCHES {
        let (path, v) = super::criterion_estimates(root, bench)?;
        let mean = &v["mean"];
        let num = |p: &Value| {
            p.as_f64()
                .with_context(|| format!("{}: no mean estimate", path.display()))
        };
        let mean_ns = num(&mean["point_estimate"])?;
        figures.push(Figure {
            bench,
            what,
            mean_ns,
            low_ns: num(&mean["confidence_interval"]["lower_bound"])?,
            high_ns: num(&mean["confidence_interval"]["upper_bound"])?,
            target_ns: target,
            met: target.map(|t| mean_ns <= t),
        });
    }
    println!();
    println!("{:<28} {:>14} {:>14}  met  what", "bench", "mean", "target");
    for f in &figures {
        println!(
            "{:<28} {:>14} {:>14}  {:<4} {}",
            f.bench,
            human(f.mean_ns),
            f.target_ns.map_or("-".into(), human),
            f.met.map_or("-", |m| if m { "yes" } else { "NO" }),
            f.what
        );
    }
    let report = Report {
        figures,
        load_average_before: before,
        load_average_after: after,
    };
    let out = root.join("target/bench/model.json");
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("figures written to {}", out.display());
    Ok(())
}

fn human(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn human_units() {
        assert_eq!(human(3_300.0), "3.30 µs");
        assert_eq!(human(13_200_000.0), "13.20 ms");
        assert_eq!(human(1.5e9), "1.50 s");
        assert_eq!(human(12.0), "12 ns");
    }
}
