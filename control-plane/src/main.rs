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
mod compare;
mod config;
mod detect;
mod engine;
mod envoy_stats;
mod lifecycle;
mod provision;
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
    /// Steer a managed service's lifecycle: pause, resume, abort (back to the primary) or
    /// promote (the next step now; from watching, start a migration).
    Lifecycle {
        /// pause, resume, abort or promote.
        op: String,
        /// The service.
        service: String,
        /// Admin API base URL (or SHADOWPLANE_ADMIN).
        #[arg(long)]
        admin: Option<String>,
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
    let mut cfg = cfg;
    let store = state::ControlPlane::open_store(&cfg)?;
    // The groups of managed services run before the first snapshot names them.
    let provisioner: std::sync::Arc<dyn provision::Provisioner> = std::sync::Arc::new(
        provision::local::LocalProvisioner::new(provision::local::LocalOptions::default()),
    );
    let engine = engine::Engine::prepare(&mut cfg, &store, std::sync::Arc::clone(&provisioner))
        .await
        .context("cannot provision the managed services")?;
    let cp = state::ControlPlane::new(cache.clone(), path, cfg, store)?;
    tokio::spawn(std::sync::Arc::clone(&cp).follow_events());
    tokio::spawn(admin::serve(admin, std::sync::Arc::clone(&cp)));
    if !engine.is_empty() {
        tokio::spawn(engine.run(std::sync::Arc::clone(&cp)));
    }
    tracing::info!(%xds_addr, %admin_addr, "shadowplane serving");
    // Ends the metrics streams on shutdown, as the xDS server ends its own.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        let _ = stop_tx.send(true);
    };
    let sink = envoy_stats::Sink::server(std::sync::Arc::clone(cp.envoy_stats()), stop_rx);
    shadowplane_xds::serve_with(cache, xds, shutdown, |routes| routes.add_service(sink)).await?;
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
                &format!("{}/v1/status", admin_url(admin.clone())),
                None,
            )
            .await?;
            let lifecycle = call(
                hyper::Method::GET,
                &format!("{}/v1/lifecycle", admin_url(admin.clone())),
                None,
            )
            .await?;
            if json {
                let both = json!({"sync": v, "lifecycle": lifecycle});
                println!("{}", serde_json::to_string_pretty(&both)?);
            } else {
                for s in lifecycle["services"].as_array().into_iter().flatten() {
                    print_lifecycle(s);
                    println!();
                }
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
        Command::Lifecycle { op, service, admin } => {
            if !["pause", "resume", "abort", "promote"].contains(&op.as_str()) {
                bail!("\"{op}\" is not pause, resume, abort or promote");
            }
            let v = call(
                hyper::Method::POST,
                &format!("{}/v1/services/{service}/lifecycle/{op}", admin_url(admin)),
                None,
            )
            .await?;
            print_lifecycle(&v);
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

/// One managed service's lifecycle, for people: phase, weights, forecasts, anomalies and the
/// last decision.
fn print_lifecycle(s: &Value) {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let step = match s["step"].as_u64() {
        Some(i) => format!(
            " step {}/{}",
            i + 1,
            s["steps"].as_array().map_or(0, |a| a.len())
        ),
        None => String::new(),
    };
    println!(
        "{}: {}{}{}  weights primary={} shadow={}  mirror={}%",
        str_of(&s["service"]),
        str_of(&s["phase"]),
        step,
        if s["paused"].as_bool() == Some(true) {
            " (paused)"
        } else {
            ""
        },
        s["weights"]["primary"],
        s["weights"]["shadow"],
        s["mirror_percent"],
    );
    for g in s["groups"].as_array().into_iter().flatten() {
        let f = &g["forecast"]["p99_ms"];
        let forecast = if f["mean"].is_number() {
            format!(
                "p99 forecast {} ms [{}, {}] at {:.0}% in {} windows",
                f["mean"],
                f["lower"],
                f["upper"],
                f["confidence"].as_f64().unwrap_or(0.0) * 100.0,
                f["horizon"]
            )
        } else if f["not_enough_data"].is_object() {
            format!(
                "p99 forecast: not enough data ({} of {} windows)",
                f["not_enough_data"]["have"], f["not_enough_data"]["need"]
            )
        } else {
            "p99 forecast: none".to_string()
        };
        println!(
            "  {:<8} {:<20} {}  last p99 {} ms",
            str_of(&g["role"]),
            str_of(&g["name"]),
            forecast,
            g["forecast"]["last_p99_ms"]
        );
        let e = &g["envoy_upstream"];
        if e["requests"].is_number() {
            println!(
                "           Envoy, last 10 s: {} requests (mirrored ones too), p50 {:.1} ms, p99 {:.1} ms",
                e["requests"],
                e["p50_ms"].as_f64().unwrap_or(0.0),
                e["p99_ms"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let Some(d) = s["last_decision"].as_object() {
        println!(
            "  last decision: {} ({})",
            d.get("action").and_then(Value::as_str).unwrap_or("-"),
            d.get("reason").and_then(Value::as_str).unwrap_or("-")
        );
    }
    for a in s["anomalies"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(3)
    {
        let cause = a["causes"][0]["name"].as_str().unwrap_or("-");
        println!(
            "  anomaly at {}: p99 {} ms, {} sigma, top cause {}",
            a["at_ms"], a["p99_ms"], a["deviation_sigma"], cause
        );
    }
}
