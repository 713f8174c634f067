//! `cargo xtask bench host-runner`: the criterion benches of `host-runner/benches/host_runner.rs`,
//! judged against the targets of issue 7 and written to target/bench/host-runner.json.
//!
//! - `instantiate`: a compiled shadowplane filter instantiated through its `InstancePre` on
//!   the pooling allocator, `_initialize` included; target 50 µs.
//! - `instantiate_and_configure`: the same, then the root context, `proxy_on_vm_start` and
//!   `proxy_on_configure`.
//! - `request_cycle`: request headers, response headers, done, log and delete through the
//!   shadowplane filter, per request on one core; target 5 µs.
//! - `request_cycle_empty_filter`: the same through the empty SDK filter: the host's and the
//!   SDK's floor.
//!
//! The ratio to the filter's per-request cost in Envoy with V8 comes from the filter-overhead
//! bench (target/bench/filter-overhead.json) when it has been run; it is not run from here.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::filter_overhead::loadavg;
use crate::cmd;

/// (criterion id under target/criterion, target in nanoseconds, what it measures).
const BENCHES: [(&str, Option<f64>, &str); 4] = [
    (
        "host_runner/instantiate",
        Some(50_000.0),
        "instantiate the filter (InstancePre, pooling allocator, _initialize)",
    ),
    (
        "host_runner/instantiate_and_configure",
        None,
        "the same, then vm_start and configure",
    ),
    (
        "host_runner/request_cycle",
        Some(5_000.0),
        "request headers, response headers, done/log/delete through the filter",
    ),
    (
        "host_runner/request_cycle_empty_filter",
        None,
        "the same through the empty SDK filter",
    ),
];

#[derive(Serialize)]
struct Figure {
    bench: &'static str,
    what: &'static str,
    mean_ns: f64,
    median_ns: f64,
    low_ns: f64,
    high_ns: f64,
    target_ns: Option<f64>,
    /// Whether the mean is within the target (none without a target).
    met: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    figures: Vec<Figure>,
    /// The CPU the filter adds per request in Envoy with V8 (the filter-overhead bench's
    /// `shadowplane_added_cpu_us_per_request` at its first load rate), when it has been run.
    envoy_filter_ns: Option<f64>,
    /// `request_cycle` over `envoy_filter_ns`.
    ratio_to_envoy: Option<f64>,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures before and after.
    load_average_before: String,
    load_average_after: String,
}

/// Builds the filters, runs the benches and writes target/bench/host-runner.json.
pub fn run(root: &Path) -> Result<()> {
    cmd::build_wasm(root, &cmd::WASM_PACKAGES)?;
    let before = loadavg();
    cmd::run(cmd::cargo().current_dir(root).args([
        "bench",
        "-p",
        "shadowplane-host-runner",
        "--bench",
        "host_runner",
    ]))?;
    let after = loadavg();
    let mut figures = Vec::new();
    for (bench, target, what) in BENCHES {
        let (path, v) = super::criterion_estimates(root, bench)?;
        let num = |p: &Value| {
            p.as_f64()
                .with_context(|| format!("{}: missing estimate", path.display()))
        };
        let mean_ns = num(&v["mean"]["point_estimate"])?;
        figures.push(Figure {
            bench,
            what,
            mean_ns,
            median_ns: num(&v["median"]["point_estimate"])?,
            low_ns: num(&v["mean"]["confidence_interval"]["lower_bound"])?,
            high_ns: num(&v["mean"]["confidence_interval"]["upper_bound"])?,
            target_ns: target,
            met: target.map(|t| mean_ns <= t),
        });
    }
    let envoy_filter_ns = envoy_filter_ns(root);
    let cycle = figures
        .iter()
        .find(|f| f.bench == "host_runner/request_cycle")
        .map(|f| f.mean_ns);
    let ratio_to_envoy = cycle.zip(envoy_filter_ns).map(|(c, e)| c / e);
    println!();
    println!("{:<40} {:>10} {:>10}  met  what", "bench", "mean", "target");
    for f in &figures {
        println!(
            "{:<40} {:>10} {:>10}  {:<4} {}",
            f.bench,
            micros(f.mean_ns),
            f.target_ns.map_or("-".into(), micros),
            f.met.map_or("-", |m| if m { "yes" } else { "NO" }),
            f.what
        );
    }
    match ratio_to_envoy {
        Some(r) => println!("request cycle / the filter's cost in Envoy (V8): {r:.2}"),
        None => println!(
            "no filter-overhead figure in target/bench/filter-overhead.json: run \
             `cargo xtask bench filter-overhead` for the ratio to Envoy"
        ),
    }
    let report = Report {
        figures,
        envoy_filter_ns,
        ratio_to_envoy,
        load_average_before: before,
        load_average_after: after,
    };
    let out = root.join("target/bench/host-runner.json");
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("figures written to {}", out.display());
    Ok(())
}

/// The CPU the shadowplane filter adds to a request in Envoy with V8 (over no filter), from
/// the filter-overhead bench's report: its first (lowest) load rate, in nanoseconds.
fn envoy_filter_ns(root: &Path) -> Option<f64> {
    let text = fs::read_to_string(root.join("target/bench/filter-overhead.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    find_number(&v, "shadowplane_added_cpu_us_per_request").map(|us| us * 1e3)
}

fn find_number(v: &Value, key: &str) -> Option<f64> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_f64)
            .or_else(|| m.values().find_map(|x| find_number(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_number(x, key)),
        _ => None,
    }
}

fn micros(ns: f64) -> String {
    format!("{:.2} µs", ns / 1e3)
}

#[cfg(test)]
mod tests {
    use super::{find_number, micros};

    #[test]
    fn finds_a_nested_figure() {
        let v = serde_json::json!({"a": [{"b": 1}, {"x": 2500.0}, {"x": 1.0}]});
        assert_eq!(find_number(&v, "x"), Some(2500.0));
        assert_eq!(find_number(&v, "missing"), None);
        assert_eq!(micros(2_573.0), "2.57 µs");
    }
}
