//! `host-runner`: run a proxy-wasm filter without Envoy.
//!
//! `host-runner run --wasm F --scenario S.yaml [--json]` plays a scenario, prints its trace
//! (or a JSON report) and exits 0 only when every expectation held.
//! `host-runner serve --wasm F --listen ADDR --upstream URL [--config JSON] [--cluster N=URL]
//! [--cluster-header NAME]` proxies live HTTP traffic through the plugin, or TCP through its L4
//! callbacks with `--upstream tcp://HOST:PORT`.

mod serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    /// Proxy HTTP/1.1 and HTTP/2 traffic through the plugin.
    Serve {
        /// The plugin's .wasm.
        #[arg(long)]
        wasm: PathBuf,
        /// Address to listen on (port 0 picks one; the chosen address is printed).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where requests go, e.g. http://127.0.0.1:9000; tcp://HOST:PORT proxies TCP through
        /// the plugin's L4 callbacks instead.
        #[arg(long)]
        upstream: hyper::Uri,
        /// Plugin configuration (JSON text).
        #[arg(long, default_value = "")]
        config: String,
        /// A cluster the plugin's callouts may reach, as NAME=URL; repeatable.
        #[arg(long = "cluster", value_parser = parse_cluster)]
        clusters: Vec<(String, hyper::Uri)>,
        /// Name each request's cluster (the `xds.cluster_name` attribute) after this request
        /// header, as an Envoy route with `cluster_header` does; every request still goes to
        /// `--upstream`.
        #[arg(long)]
        cluster_header: Option<String>,
    },
}

fn parse_cluster(s: &str) -> Result<(String, hyper::Uri), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=URL"))?;
    let uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
    Ok((name.to_string(), uri))
}

fn load(wasm: &PathBuf) -> Result<shadowplane_host_runner::Compiled> {
    let bytes = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let host = Host::new(HostConfig::default())?;
    host.compile(&bytes)
        .with_context(|| format!("cannot load {}", wasm.display()))
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
    let (wasm, scenario, json) = match Cli::parse().command {
        Command::Run {
            wasm,
            scenario,
            json,
        } => (wasm, scenario, json),
        Command::Serve {
            wasm,
            listen,
            upstream,
            config,
            clusters,
            cluster_header,
        } => {
            let compiled = load(&wasm)?;
            let opts = serve::Options {
                listen,
                upstream,
                config: config.into_bytes(),
                clusters: clusters.into_iter().collect::<BTreeMap<_, _>>(),
                cluster_header,
            };
            let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
            rt.block_on(serve::serve(&compiled, opts))?;
            return Ok(true);
        }
    };
    let text = std::fs::read_to_string(&scenario)
        .with_context(|| format!("cannot read {}", scenario.display()))?;
    let sc = Scenario::from_yaml(&text, &scenario.display().to_string())?;
    let compiled = load(&wasm)?;
    let outcome = sc.run(&compiled)?;
    if json {
        let report = serde_json::json!({
            "passed": outcome.passed(),
            "checks": outcome.checks,
            "failures": outcome.failures,
            "trace": outcome.trace,
            "http_calls": outcome.http_calls,
            "metrics": outcome.metrics,
            "hostcalls": outcome.hostcalls,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", outcome.render());
    }
    Ok(outcome.passed())
}
