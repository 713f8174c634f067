//! `shadowplane`: the control plane binary (xDS server, admin API) and its CLI.
//!
//! ```text
//! shadowplane serve --config shadowplane.yaml
//! shadowplane check --config shadowplane.yaml
//! shadowplane weights set SERVICE primary=90 shadow=10 [--canary NODE]...
//! shadowplane weights get
//! shadowplane status
//! shadowplane reload [--canary NODE]...
//! shadowplane detect --input F.csv --output G.csv
//! ```
//! An invalid configuration file exits with status 2 after one line naming file:line:column;
//! so does a bad row for `detect`, naming file:line.

mod admin;
// The step comparison, like the lifecycle, waits for the control loop of issue 5.
#[allow(dead_code)]
mod compare;
mod config;
mod detect;
mod provision;
// The lifecycle engine is a tested pure state machine; the control loop that feeds it model
// verdicts and carries out its pushes comes next (issue 5), so it has no caller yet.
#[allow(dead_code)]
mod lifecycle;
mod resources;
mod state;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// The admin API the CLI talks to when `--admin` and `SHADOWPLANE_ADMIN` are not given.
const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:18001";

#[derive(Parser)]
#[command(
    name = "shadowplane",
    version,
    about = "Predictive shadow groups for Envoy: the control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve xDS and the admin API for a configuration file.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit (status 2 when invalid).
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show or set a service's weights.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
        /// Admin API base URL (or SHADOWPLANE_ADMIN).
        #[arg(long, global = true)]
        admin: Option<String>,
    },
    /// Per-node sync status: SYNCED, STALE or NACKED with the error.
    Status {
        /// Admin API base URL (or SHADOWPLANE_ADMIN).
        #[arg(long)]
        admin: Option<String>,
        /// Print the JSON answer instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the configuration file the server was started with and push it.
    Reload {
        /// Send to these nodes first, to the rest only after they ACKed.
        #[arg(long)]
        canary: Vec<String>,
        /// Admin API base URL (or SHADOWPLANE_ADMIN).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Score a `timestamp,value` CSV for anomalies, row by row from the past only.
    Detect {
        /// The series to score.
        #[arg(long)]
        input: PathBuf,
        /// Where to write `timestamp,value,anomaly_score`.
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// `weights set SERVICE primary=90 shadow=10`: percent per role, summing to 100.
    Set {
        /// The service.
        service: String,
        /// `ROLE=PERCENT` pairs.
        #[arg(required = true)]
        weights: Vec<String>,
        /// Send to these nodes first, to the rest only after they ACKed.
        #[arg(long)]
        canary: Vec<String>,
    },
    /// Show every service's groups and weights.
    Get,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Detect { input, output } = &cli.command {
        return match detect::run(input, output) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shadowplane: {e:#}");
                if e.downcast_ref::<detect::BadRow>().is_some() {
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shadowplane: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shadowplane: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing();
            match runtime.block_on(serve(config, cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shadowplane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} services)",
                    config.display(),
                    c.listeners.len(),
                    c.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shadowplane: {e}");
                ExitCode::from(2)
            }
        },
        other => match runtime.block_on(client(other)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shadowplane: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHADOWPLANE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(path: PathBuf, cfg: config::Config) -> anyhow::Result<()> {
    let xds_addr = cfg.xds_address;
    let admin_addr = cfg.admin_address;
    let xds = tokio::net::TcpListener::bind(xds_addr)
        .await
        .with_context(|| format!("cannot listen for xDS on {xds_addr}"))?;
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot listen for the admin API on {admin_addr}"))?;
    let cache = shadowplane_xds::SnapshotCache::new();
    let cp = state::ControlPlane::new(cache.clone(), path, cfg)?;
    tokio::spawn(std::sync::Arc::clone(&cp).follow_events());
    tokio::spawn(admin::serve(admin, std::sync::Arc::clone(&cp)));
    tracing::info!(%xds_addr, %admin_addr, "shadowplane serving");
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    shadowplane_xds::serve(cache, xds, shutdown).await?;
    Ok(())
}

fn admin_url(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("SHADOWPLANE_ADMIN").ok())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_string())
        .trim_end_matches('/')
        .to_string()
}

async fn call(method: hyper::Method, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{url} answered {status} with a body that is not JSON"))?;
    if !status.is_success() {
        bail!(
            "{}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("request failed")
        );
    }
    Ok(v)
}

async fn client(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Weights { command, admin } => {
            let base = admin_url(admin);
            match command {
                WeightsCommand::Set {
                    service,
                    weights,
                    canary,
                } => {
                    let mut map = BTreeMap::new();
                    for w in &weights {
                        let (role, pct) = w
                            .split_once('=')
                            .with_context(|| format!("\"{w}\" is not ROLE=PERCENT"))?;
                        let pct: u32 = pct.parse().with_context(|| {
                            format!("\"{pct}\" in \"{w}\" is not a whole percent")
                        })?;
                        map.insert(role.to_string(), pct);
                    }
                    let canary: BTreeSet<String> = canary.into_iter().collect();
                    let v = call(
                        hyper::Method::PUT,
                        &format!("{base}/v1/services/{service}/weights"),
                        Some(json!({"weights": map, "canary": canary})),
                    )
                    .await?;
                    println!(
                        "{service}: {} (version {})",
                        weights.join(" "),
                        v["version"].as_str().unwrap_or("?")
                    );
                }
                WeightsCommand::Get => {
                    let v = call(hyper::Method::GET, &format!("{base}/v1/services"), None).await?;
                    for s in v["services"].as_array().into_iter().flatten() {
                        let groups: Vec<String> = s["groups"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|g| {
                                format!(
                                    "{}={} ({})",
                                    g["role"].as_str().unwrap_or("?"),
                                    g["weight"],
                                    g["name"].as_str().unwrap_or("?")
                                )
                            })
                            .collect();
                        println!(
                            "{}: {}",
                            s["name"].as_str().unwrap_or("?"),
                            groups.join(" ")
                        );
                    }
                }
            }
        }
        Command::Status { admin, json } => {
            let v = call(
                hyper::Method::GET,
                &format!("{}/v1/status", admin_url(admin)),
                None,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<24} {:<16} {:<8} {:<10} ERROR",
                    "NODE", "GROUP", "STATE", "VERSION"
                );
                for g in v["groups"].as_array().into_iter().flatten() {
                    for n in g["nodes"].as_array().into_iter().flatten() {
                        println!(
                            "{:<24} {:<16} {:<8} {:<10} {}",
                            n["node"].as_str().unwrap_or("?"),
                            g["group"].as_str().unwrap_or("?"),
                            n["state"].as_str().unwrap_or("?"),
                            n["target_version"].as_str().unwrap_or("?"),
                            n["error"].as_str().unwrap_or(""),
                        );
                    }
                }
            }
        }
        Command::Reload { canary, admin } => {
            let v = call(
                hyper::Method::POST,
                &format!("{}/v1/reload", admin_url(admin)),
                Some(json!({"canary": canary})),
            )
            .await?;
            println!(
                "reloaded (version {})",
                v["version"].as_str().unwrap_or("?")
            );
        }
        Command::Serve { .. } | Command::Check { .. } | Command::Detect { .. } => {
            bail!("not a client command")
        }
    }
    Ok(())
}
