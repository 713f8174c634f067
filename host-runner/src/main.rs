//! `host-runner`: run a proxy-wasm filter without Envoy.
//!
//! `host-runner run --wasm F --scenario S.yaml [--json]` plays a scenario, prints its trace
//! (or a JSON report) and exits 0 only when every expectation held.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shadowplane_host_runner::scenario::Scenario;
use shadowplane_host_runner::{Host, HostConfig};

#[derive(Parser)]
#[command(name = "host-runner", about = "A proxy-wasm host on wasmtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play a YAML scenario against a plugin.
    Run {
        /// The plugin's .wasm.
        #[arg(long)]
        wasm: PathBuf,
        /// The scenario file.
        #[arg(long)]
        scenario: PathBuf,
        /// Print a JSON report instead of the trace.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("host-runner: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let Command::Run {
        wasm,
        scenario,
        json,
    } = Cli::parse().command;
    let text = std::fs::read_to_string(&scenario)
        .with_context(|| format!("cannot read {}", scenario.display()))?;
    let sc = Scenario::from_yaml(&text, &scenario.display().to_string())?;
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let host = Host::new(HostConfig::default())?;
    let compiled = host
        .compile(&bytes)
        .with_context(|| format!("cannot load {}", wasm.display()))?;
    let outcome = sc.run(&compiled)?;
    if json {
        let report = serde_json::json!({
            "passed": outcome.passed(),
            "checks": outcome.checks,
            "failures": outcome.failures,
            "trace": outcome.trace,
            "http_calls": outcome.http_calls,
            "metrics": outcome.metrics,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", outcome.render());
    }
    Ok(outcome.passed())
}
