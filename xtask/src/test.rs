//! `cargo xtask test`: what CI runs, step by step, stopping at the first failure.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

/// The filter's .wasm must stay small enough to ship in an Envoy config push.
const WASM_MAX_BYTES: u64 = 300_000;

/// Runs every check in order; `test_args` go to `cargo test` (e.g. a test name filter).
pub fn test(root: &Path, test_args: &[OsString]) -> Result<()> {
    let wasm = root.join("target/wasm32-wasip1/wasm/shadowplane_filter.wasm");
    let mut envoy = None;
    let mut steps = Steps::default();
    steps.run("setup", || {
        envoy = Some(setup::setup(root)?);
        Ok(())
    })?;
    steps.run("fmt", || {
        cmd::run(
            cmd::cargo()
                .current_dir(root)
                .args(["fmt", "--all", "--", "--check"]),
        )
    })?;
    steps.run("clippy", || {
        cmd::run(cmd::cargo().current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    // Natively the Wasm-only code of these crates is compiled out; lint it for its real target.
    steps.run("clippy filter wasm32-wasip1", || {
        let mut clippy = cmd::cargo();
        clippy.current_dir(root).arg("clippy");
        for p in cmd::WASM_PACKAGES {
            clippy.args(["-p", p]);
        }
        cmd::run(clippy.args(["--target", "wasm32-wasip1", "--", "-D", "warnings"]))
    })?;
    steps.run("build filter wasm", || {
        // The example filters are guests of host-runner's tests as well as of the benches.
        cmd::build_wasm(root, &cmd::WASM_PACKAGES)?;
        check_wasm_size(&wasm)
    })?;
    let mut totals = Totals::default();
    steps.run("test", || {
        let envoy = envoy.as_deref().context("setup found no envoy")?;
        cmd::run_watching(
            cmd::cargo()
                .current_dir(root)
                .env("ENVOY_BIN", envoy)
                .env("SHADOWPLANE_FILTER_WASM", &wasm)
                .args(["test", "--workspace"])
                .args(test_args),
            |line| totals.add(line),
        )
    })?;
    // Compiled, not run, and with the test profile: the check is that every bench builds,
    // and the test step's artifacts already hold its dependencies. `cargo bench` would build
    // the workspace again optimised (wasmtime and Cranelift alone take minutes); `cargo
    // xtask bench NAME` does that when a bench is really run.
    steps.run("bench compile", || {
        cmd::run(cmd::cargo().current_dir(root).args([
            "test",
            "--workspace",
            "--benches",
            "--no-run",
        ]))
    })?;
    // The README's first command, end to end: a whole scenario through real Envoys, the
    // control plane and local groups. Its prediction's timing is the migration bench's to
    // judge; here it must run to the end, migrate, fail no request in transit and write its
    // report.
    if test_args.is_empty() {
        steps.run("demo (creeping-degradation, headless)", || {
            let opts = crate::demo::Options {
                scenario: "creeping-degradation".into(),
                headless: true,
                report: Some(root.join("target/demo/ci-creeping-degradation")),
                policy: crate::demo::Policy::Predictive,
            };
            let s = crate::demo::demo(root, &opts)?;
            check_demo(&s)
        })?;
    } else {
        println!("==> demo: not run, because a test filter was given");
    }
    steps.summary();
    // One closing line for every test binary together: cargo's own last line is the result
    // of whichever binary ran last (often a doc-test run with nothing in it).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

/// Test counts summed over the `test result:` lines of every test binary.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds one line of `cargo test` output if it is a `test result:` line.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// What a demo run must show whatever its timing.
fn check_demo(s: &crate::demo::Summary) -> Result<()> {
    if s.migrations == 0 {
        bail!("the demo's degrading primary was never migrated from: {s:?}");
    }
    if s.cutover_s.is_none() {
        bail!("the demo's migration never reached the cutover: {s:?}");
    }
    if s.failed_in_transit > 0 {
        bail!(
            "{} requests failed without an upstream's answer during the demo: {s:?}",
            s.failed_in_transit
        );
    }
    if s.requests < 1000 {
        bail!("the demo's load sent only {} requests: {s:?}", s.requests);
    }
    Ok(())
}

fn check_wasm_size(wasm: &Path) -> Result<()> {
    let size = fs::metadata(wasm)
        .with_context(|| format!("the filter build left no {}", wasm.display()))?
        .len();
    println!("{}: {size} bytes (limit {WASM_MAX_BYTES})", wasm.display());
    if size > WASM_MAX_BYTES {
        bail!(
            "{} is {size} bytes, over the {WASM_MAX_BYTES} byte limit",
            wasm.display()
        );
    }
    Ok(())
}

/// The steps run so far and how long each took.
#[derive(Default)]
struct Steps(Vec<(&'static str, Duration)>);

impl Steps {
    fn run(&mut self, name: &'static str, step: impl FnOnce() -> Result<()>) -> Result<()> {
        println!("==> {name}");
        let start = Instant::now();
        let result = step();
        let took = start.elapsed();
        self.0.push((name, took));
        match result {
            Ok(()) => {
                println!("==> {name}: ok in {:.1}s", took.as_secs_f64());
                Ok(())
            }
            Err(err) => {
                self.summary();
                Err(err.context(format!(
                    "step `{name}` failed after {:.1}s",
                    took.as_secs_f64()
                )))
            }
        }
    }

    fn summary(&self) {
        println!("==> steps:");
        for (name, took) in &self.0 {
            println!("    {:>7.1}s  {name}", took.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_result_line_and_ignore_the_rest() {
        let mut t = Totals::default();
        for line in [
            "test result: ok. 20 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 5.24s",
            "running 3 tests",
            "test result: FAILED. 8 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 15.25s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.add(line);
        }
        assert_eq!(
            t,
            Totals {
                passed: 28,
                failed: 1,
                ignored: 1
            }
        );
    }
}
