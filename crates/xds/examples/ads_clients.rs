//! Simulated Envoys for `cargo xtask bench xds-fanout`: N ADS clients, each on its own HTTP/2
//! connection, that subscribe, ACK and NACK as Envoy does, then time a weight change's fan-out.
//!
//! ```text
//! ads_clients --xds http://127.0.0.1:18000 --admin http://127.0.0.1:18001 \
//!     --clients 1000 --mode sotw --changes 90:10,50:50 [--wait-stdin] [--nack-every K]
//! ```
//!
//! Each client follows Envoy's order on one ADS stream: CDS (wildcard), then EDS for the EDS
//! clusters the CDS response names, then LDS (wildcard) once the clusters are warm, then RDS
//! for the route each listener's HTTP connection manager names and ECDS for each HTTP filter
//! it loads by `config_discovery`. Every name comes from decoding what the server sent, not
//! from the configuration; a response that does not decode (or carries the wrong type) is
//! NACKed with the error, as Envoy would, and counted.
//!
//! Once every client holds the initial configuration, this process changes the weights itself
//! through the admin API, `t0` taken just before the PUT. A client's latency is the instant it
//! sent the last of the two ACKs (the route with the new `weighted_clusters`, the ECDS filter
//! configuration with the new group weights; both checked by decoding them) minus `t0`. The
//! next change starts only when every client has ACKed the last one (or the change timed out).
//!
//! stdout carries JSON lines only: `{"event":"synced",...}` after the ramp and
//! `{"event":"changed",...}` after the changes (with `--wait-stdin`, each is followed by
//! waiting for a line on stdin, so a caller can sample the server in between), then one
//! `{"event":"result",...}` line with every figure. Progress goes to stderr.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{Node, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as NetworkConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, StringValue};
use envoy_types::pb::google::rpc::Status;
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Simulated Envoys on ADS: time a weight change's fan-out")]
struct Args {
    /// The xDS server, `http://IP:PORT`.
    #[arg(long)]
    xds: String,
    /// The admin API the weight changes go to, `http://IP:PORT`.
    #[arg(long)]
    admin: String,
    /// How many clients (one HTTP/2 connection and one ADS stream each).
    #[arg(long)]
    clients: usize,
    /// State of the world or delta ADS.
    #[arg(long, value_enum)]
    mode: Mode,
    /// The `node.cluster` every client sends.
    #[arg(long, default_value = "shadowplane")]
    node_cluster: String,
    /// The service whose weights change.
    #[arg(long, default_value = "checkout")]
    service: String,
    /// The Envoy cluster of the service's primary group.
    #[arg(long, default_value = "checkout-blue")]
    primary: String,
    /// The Envoy cluster of the service's shadow group.
    #[arg(long, default_value = "checkout-green")]
    shadow: String,
    /// The weights the server starts with, `PRIMARY:SHADOW`.
    #[arg(long, default_value = "100:0")]
    initial: String,
    /// The weight changes, in order, `PRIMARY:SHADOW,...`.
    #[arg(long, default_value = "90:10,50:50,90:10,50:50,90:10")]
    changes: String,
    /// Clients connecting or not yet synced at once during the ramp.
    #[arg(long, default_value_t = 200)]
    ramp_concurrency: usize,
    /// The ramp fails after this many seconds.
    #[arg(long, default_value_t = 120)]
    ramp_timeout_secs: u64,
    /// A change that not every client ACKed after this many seconds is reported incomplete.
    #[arg(long, default_value_t = 10)]
    change_timeout_secs: u64,
    /// Quiet time after each change, before the next (late or extra pushes are counted).
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Every K-th client (ids K-1, 2K-1, ...) NACKs every route and ECDS update after its
    /// initial sync, keeping its previous configuration; 0: none. Those clients are left out of
    /// the latencies. (shadowplane rolls a group back when one of its nodes NACKs.)
    #[arg(long, default_value_t = 0)]
    nack_every: usize,
    /// After each `synced` and `changed` line, wait for a line on stdin before going on.
    #[arg(long)]
    wait_stdin: bool,
}

/// Which ADS variant the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `StreamAggregatedResources`: full resource sets, ACK by version and nonce.
    Sotw,
    /// `DeltaAggregatedResources`: changed resources only, ACK by nonce.
    Delta,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

/// The five resource types a shadowplane Envoy uses, in the order Envoy asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    ExtensionConfig,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::ExtensionConfig,
    ];

    fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::ExtensionConfig => {
                "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
            }
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "clusters",
            Kind::Endpoint => "endpoints",
            Kind::Listener => "listeners",
            Kind::Route => "routes",
            Kind::ExtensionConfig => "extension_configs",
        }
    }

    fn from_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    fn index(self) -> usize {
        self as usize
    }
}

const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const STRING_VALUE_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Percent for the primary and the shadow group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Weights {
    primary: u32,
    shadow: u32,
}

impl Weights {
    fn parse(text: &str) -> Result<Weights> {
        let (p, s) = text
            .split_once(':')
            .with_context(|| format!("`{text}` is not PRIMARY:SHADOW"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .with_context(|| format!("`{v}` in `{text}` is not a whole percent"))
        };
        Ok(Weights {
            primary: parse(p)?,
            shadow: parse(s)?,
        })
    }

    fn json(self) -> Value {
        json!([self.primary, self.shadow])
    }
}

/// What a client tells the coordinator.
#[derive(Debug)]
enum Event {
    /// The client ACKed a response of every type it subscribed to; `ecds` says whether its
    /// listeners load a filter by ECDS (so ECDS is part of every change).
    Synced { id: usize, ecds: bool },
    /// The client ACKed a route or ECDS response carrying `weights`, at `at`.
    Seen {
        id: usize,
        kind: Kind,
        weights: Weights,
        at: Instant,
    },
    /// The client NACKed a response.
    Nacked {
        id: usize,
        kind: Kind,
        error: String,
    },
    /// The client's connection or stream failed; it stops.
    Failed { id: usize, error: String },
}

/// Counters every client adds to.
#[derive(Debug, Default)]
struct Counters {
    responses: [AtomicU64; 5],
    resources: [AtomicU64; 5],
    resource_bytes: [AtomicU64; 5],
}

impl Counters {
    fn add(&self, kind: Kind, resources: usize, bytes: usize) {
        let i = kind.index();
        self.responses[i].fetch_add(1, Ordering::Relaxed);
        self.resources[i].fetch_add(resources as u64, Ordering::Relaxed);
        self.resource_bytes[i].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [[u64; 3]; 5] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        std::array::from_fn(|i| {
            [
                load(&self.responses[i]),
                load(&self.resources[i]),
                load(&self.resource_bytes[i]),
            ]
        })
    }
}

/// Per type: responses, resources in them and resource bytes, between two snapshots.
fn counters_json(before: &[[u64; 3]; 5], after: &[[u64; 3]; 5]) -> Value {
    let mut map = serde_json::Map::new();
    for kind in Kind::ALL {
        let (a, b) = (after[kind.index()], before[kind.index()]);
        map.insert(
            kind.short().to_owned(),
            json!({
                "responses": a[0] - b[0],
                "resources": a[1] - b[1],
                "resource_bytes": a[2] - b[2],
            }),
        );
    }
    Value::Object(map)
}

/// What a client needs from the coordinator.
#[derive(Debug)]
struct Shared {
    args: Args,
    events: mpsc::UnboundedSender<Event>,
    counters: Counters,
}

/// What the resources of one type, decoded, ask the client to do next.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decoded {
    /// From clusters: the EDS resources to subscribe to.
    endpoints: Option<Vec<String>>,
    /// From listeners: the route configurations the HTTP connection managers name.
    routes: Option<Vec<String>>,
    /// From listeners: the HTTP filters loaded by ECDS.
    extension_configs: Option<Vec<String>>,
    /// From a route or ECDS config of the service: its weights.
    weights: Option<Weights>,
}

/// Decodes resources of `kind` as Envoy would before accepting them; an error is what Envoy
/// would NACK with.
fn decode(kind: Kind, resources: &[&Any], primary: &str, shadow: &str) -> Result<Decoded> {
    let mut out = Decoded::default();
    for any in resources {
        ensure!(
            any.type_url == kind.type_url(),
            "a resource of type {} in a {} response",
            any.type_url,
            kind.type_url()
        );
    }
    let weights = |named: &mut dyn Iterator<Item = (String, u32)>| {
        let mut w = Weights {
            primary: 0,
            shadow: 0,
        };
        let mut found = false;
        for (name, weight) in named {
            if name == primary {
                w.primary = weight;
                found = true;
            } else if name == shadow {
                w.shadow = weight;
                found = true;
            }
        }
        found.then_some(w)
    };
    match kind {
        Kind::Cluster => {
            let mut eds = Vec::new();
            for any in resources {
                let c = Cluster::decode(any.value.as_slice()).context("Cluster")?;
                if c.cluster_discovery_type
                    == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
                {
                    let service = c
                        .eds_cluster_config
                        .map(|e| e.service_name)
                        .unwrap_or_default();
                    eds.push(if service.is_empty() { c.name } else { service });
                }
            }
            eds.sort();
            out.endpoints = Some(eds);
        }
        Kind::Endpoint => {
            for any in resources {
                envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                    any.value.as_slice(),
                )
                .context("ClusterLoadAssignment")?;
            }
        }
        Kind::Listener => {
            let (mut routes, mut filters) = (Vec::new(), Vec::new());
            for any in resources {
                let l = Listener::decode(any.value.as_slice()).context("Listener")?;
                for filter in l.filter_chains.iter().flat_map(|c| &c.filters) {
                    let Some(NetworkConfigType::TypedConfig(typed)) = &filter.config_type else {
                        continue;
                    };
                    if typed.type_url != HCM_TYPE_URL {
                        continue;
                    }
                    let hcm = HttpConnectionManager::decode(typed.value.as_slice())
                        .with_context(|| format!("listener {}: HttpConnectionManager", l.name))?;
                    match hcm.route_specifier {
                        Some(RouteSpecifier::Rds(rds)) => routes.push(rds.route_config_name),
                        Some(RouteSpecifier::RouteConfig(_)) => {}
                        other => {
                            bail!("listener {}: unsupported route specifier {other:?}", l.name)
                        }
                    }
                    for http in hcm.http_filters {
                        if let Some(HttpConfigType::ConfigDiscovery(_)) = http.config_type {
                            filters.push(http.name);
                        }
                    }
                }
            }
            routes.sort();
            routes.dedup();
            filters.sort();
            filters.dedup();
            out.routes = Some(routes);
            out.extension_configs = Some(filters);
        }
        Kind::Route => {
            for any in resources {
                let r = RouteConfiguration::decode(any.value.as_slice())
                    .context("RouteConfiguration")?;
                for route in r.virtual_hosts.iter().flat_map(|v| &v.routes) {
                    let Some(Action::Route(action)) = &route.action else {
                        continue;
                    };
                    let Some(ClusterSpecifier::WeightedClusters(wc)) = &action.cluster_specifier
                    else {
                        continue;
                    };
                    let mut named = wc
                        .clusters
                        .iter()
                        .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)));
                    if let Some(w) = weights(&mut named) {
                        out.weights = Some(w);
                    }
                }
            }
        }
        Kind::ExtensionConfig => {
            #[derive(Deserialize)]
            struct FilterConfig {
                groups: Vec<Group>,
            }
            #[derive(Deserialize)]
            struct Group {
                name: String,
                weight: u32,
            }
            for any in resources {
                let tec = TypedExtensionConfig::decode(any.value.as_slice())
                    .context("TypedExtensionConfig")?;
                let typed = tec
                    .typed_config
                    .with_context(|| format!("extension config {}: no typed_config", tec.name))?;
                if typed.type_url != WASM_TYPE_URL {
                    continue;
                }
                let wasm = Wasm::decode(typed.value.as_slice())
                    .with_context(|| format!("extension config {}: Wasm", tec.name))?;
                let Some(configuration) = wasm.config.and_then(|c| c.configuration) else {
                    continue;
                };
                ensure!(
                    configuration.type_url == STRING_VALUE_TYPE_URL,
                    "extension config {}: plugin configuration of type {}",
                    tec.name,
                    configuration.type_url
                );
                let text = StringValue::decode(configuration.value.as_slice())
                    .with_context(|| format!("extension config {}: StringValue", tec.name))?
                    .value;
                let config: FilterConfig = serde_json::from_str(&text).with_context(|| {
                    format!("extension config {}: filter configuration", tec.name)
                })?;
                let mut named = config.groups.into_iter().map(|g| (g.name, g.weight));
                if let Some(w) = weights(&mut named) {
                    out.weights = Some(w);
                }
            }
        }
    }
    Ok(out)
}

/// A subscription to (re)state: SotW sends `names`, delta `added` and `removed`.
#[derive(Debug)]
struct Ask {
    kind: Kind,
    added: Vec<String>,
    removed: Vec<String>,
    names: Vec<String>,
}

/// One client's view of its subscriptions, shared by both modes.
#[derive(Debug)]
struct Subscriptions {
    /// Per type: `None` until subscribed, then the names (empty: wildcard).
    names: [Option<Vec<String>>; 5],
    /// Per type: a response was accepted.
    accepted: [bool; 5],
    synced: bool,
    ecds: bool,
}

impl Subscriptions {
    fn new() -> Subscriptions {
        Subscriptions {
            names: Default::default(),
            accepted: [false; 5],
            synced: false,
            ecds: false,
        }
    }

    /// The subscriptions that `decoded` (of type `kind`, just accepted) changes. LDS follows
    /// the first accepted EDS (or CDS without EDS clusters), as Envoy asks for listeners once
    /// its clusters are warm.
    fn follow(&mut self, kind: Kind, decoded: &Decoded) -> Vec<Ask> {
        self.accepted[kind.index()] = true;
        let mut changes = Vec::new();
        let mut set = |k: Kind, names: &Option<Vec<String>>| {
            let Some(new) = names else { return };
            let old = self.names[k.index()].clone();
            if old.as_ref() == Some(new) || (old.is_none() && new.is_empty()) {
                return;
            }
            let old = old.unwrap_or_default();
            let added = new.iter().filter(|n| !old.contains(n)).cloned().collect();
            let removed = old.iter().filter(|n| !new.contains(n)).cloned().collect();
            self.names[k.index()] = Some(new.clone());
            changes.push(Ask {
                kind: k,
                added,
                removed,
                names: new.clone(),
            });
        };
        set(Kind::Endpoint, &decoded.endpoints);
        set(Kind::Route, &decoded.routes);
        set(Kind::ExtensionConfig, &decoded.extension_configs);
        if let Some(filters) = &decoded.extension_configs {
            self.ecds = !filters.is_empty();
        }
        let clusters_warm = match &self.names[Kind::Endpoint.index()] {
            Some(_) => self.accepted[Kind::Endpoint.index()],
            None => kind == Kind::Cluster,
        };
        if self.names[Kind::Listener.index()].is_none() && clusters_warm {
            self.names[Kind::Listener.index()] = Some(Vec::new());
            changes.push(Ask {
                kind: Kind::Listener,
                added: Vec::new(),
                removed: Vec::new(),
                names: Vec::new(),
            });
        }
        changes
    }

    /// True the first time every subscribed type has an accepted response.
    fn just_synced(&mut self) -> bool {
        if self.synced || self.names[Kind::Listener.index()].is_none() {
            return false;
        }
        // A type never subscribed to (no EDS cluster, no ECDS filter) is not waited for.
        let all = Kind::ALL
            .into_iter()
            .all(|k| self.names[k.index()].is_none() || self.accepted[k.index()]);
        self.synced = all;
        all
    }
}

/// A NACK's error detail, as Envoy sends it (INVALID_ARGUMENT and the reason).
fn nack_status(error: &str) -> Status {
    Status {
        code: 3,
        message: error.to_owned(),
        details: Vec::new(),
    }
}

/// One simulated Envoy: connects, runs its ADS stream until it fails or the process exits.
async fn client(id: usize, shared: Arc<Shared>, ramp: Arc<Semaphore>) {
    let permit = ramp.acquire_owned().await;
    let result = match shared.args.mode {
        Mode::Sotw => sotw(id, &shared, permit.ok()).await,
        Mode::Delta => delta(id, &shared, permit.ok()).await,
    };
    let error = match result {
        Ok(()) => "the server ended the stream".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    let _ = shared.events.send(Event::Failed { id, error });
}

/// Connects with a few retries: a burst of connections can overflow the listen backlog.
async fn connect(xds: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(xds.to_owned())
        .context("bad --xds")?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut last = None;
    for attempt in 0..4u32 {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
        .with_context(|| format!("could not connect to {xds}"))
}

fn node(id: usize, cluster: &str) -> Node {
    Node {
        id: format!("sim-envoy-{id:05}"),
        cluster: cluster.to_owned(),
        user_agent_name: "envoy".to_owned(),
        ..Default::default()
    }
}

/// Whether client `id` rejects weight changes (`--nack-every`).
fn is_nacker(args: &Args, id: usize) -> bool {
    args.nack_every > 0 && id % args.nack_every == args.nack_every - 1
}

/// What a client does with one response, whichever the mode: decode, decide between ACK and
/// NACK. Returns the NACK's error, if any, and the decoded resources.
fn judge(
    id: usize,
    shared: &Shared,
    subs: &Subscriptions,
    kind: Kind,
    resources: &[&Any],
) -> (Option<String>, Decoded) {
    let args = &shared.args;
    match decode(kind, resources, &args.primary, &args.shadow) {
        Err(e) => (Some(format!("{e:#}")), Decoded::default()),
        Ok(d) => {
            let rejects = subs.synced
                && is_nacker(args, id)
                && matches!(kind, Kind::Route | Kind::ExtensionConfig);
            if rejects {
                (
                    Some("simulated rejection (--nack-every)".to_owned()),
                    Decoded::default(),
                )
            } else {
                (None, d)
            }
        }
    }
}

/// After a response of `kind` was ACKed at `at`: reports weights and the first sync.
fn report(
    id: usize,
    shared: &Shared,
    subs: &mut Subscriptions,
    kind: Kind,
    decoded: &Decoded,
    at: Instant,
) {
    if let (Some(weights), Kind::Route | Kind::ExtensionConfig) = (decoded.weights, kind) {
        let _ = shared.events.send(Event::Seen {
            id,
            kind,
            weights,
            at,
        });
    }
    if subs.just_synced() {
        let _ = shared.events.send(Event::Synced {
            id,
            ecds: subs.ecds,
        });
    }
}

async fn sotw(id: usize, shared: &Shared, mut permit: Option<OwnedSemaphorePermit>) -> Result<()> {
    let channel = connect(&shared.args.xds).await?;
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let mut subs = Subscriptions::new();
    let mut versions: [String; 5] = Default::default();
    let mut nonces: [String; 5] = Default::default();
    subs.names[Kind::Cluster.index()] = Some(Vec::new());
    tx.send(DiscoveryRequest {
        node: Some(node(id, &shared.args.node_cluster)),
        type_url: Kind::Cluster.type_url().to_owned(),
        ..Default::default()
    })
    .await?;
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let mut stream = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .context("StreamAggregatedResources")?
        .into_inner();
    while let Some(resp) = stream.message().await.context("ADS stream")? {
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = resp;
        let kind = Kind::from_url(&type_url)
            .with_context(|| format!("a response of unknown type {type_url}"))?;
        let bytes = resources.iter().map(|r| r.value.len()).sum();
        shared.counters.add(kind, resources.len(), bytes);
        let refs: Vec<&Any> = resources.iter().collect();
        let (nack, decoded) = judge(id, shared, &subs, kind, &refs);
        let i = kind.index();
        nonces[i] = nonce.clone();
        if let Some(error) = nack {
            // A NACK repeats the last accepted version with the rejected response's nonce.
            tx.send(DiscoveryRequest {
                version_info: versions[i].clone(),
                resource_names: subs.names[i].clone().unwrap_or_default(),
                type_url,
                response_nonce: nonce,
                error_detail: Some(nack_status(&error)),
                ..Default::default()
            })
            .await?;
            let _ = shared.events.send(Event::Nacked { id, kind, error });
            continue;
        }
        // Envoy asks for what the new resources reference while it applies them, then ACKs.
        for Ask { kind: k, names, .. } in subs.follow(kind, &decoded) {
            let j = k.index();
            tx.send(DiscoveryRequest {
                version_info: versions[j].clone(),
                resource_names: names,
                type_url: k.type_url().to_owned(),
                response_nonce: nonces[j].clone(),
                ..Default::default()
            })
            .await?;
        }
        versions[i] = version_info.clone();
        tx.send(DiscoveryRequest {
            version_info,
            resource_names: subs.names[i].clone().unwrap_or_default(),
            type_url,
            response_nonce: nonce,
            ..Default::default()
        })
        .await?;
        let at = Instant::now();
        report(id, shared, &mut subs, kind, &decoded, at);
        if subs.synced {
            permit.take();
        }
    }
    Ok(())
}

async fn delta(id: usize, shared: &Shared, mut permit: Option<OwnedSemaphorePermit>) -> Result<()> {
    let channel = connect(&shared.args.xds).await?;
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut subs = Subscriptions::new();
    // Per type, what the client holds: name -> (version, resource).
    let mut held: [BTreeMap<String, (String, Any)>; 5] = Default::default();
    subs.names[Kind::Cluster.index()] = Some(Vec::new());
    // An empty first subscription is a wildcard one.
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(id, &shared.args.node_cluster)),
        type_url: Kind::Cluster.type_url().to_owned(),
        ..Default::default()
    })
    .await?;
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let mut stream = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .context("DeltaAggregatedResources")?
        .into_inner();
    while let Some(resp) = stream.message().await.context("delta ADS stream")? {
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            removed_resources,
            nonce,
            ..
        } = resp;
        let kind = Kind::from_url(&type_url)
            .with_context(|| format!("a response of unknown type {type_url}"))?;
        let bytes = resources
            .iter()
            .map(|r| r.resource.as_ref().map_or(0, |a| a.value.len()))
            .sum();
        shared.counters.add(kind, resources.len(), bytes);
        let i = kind.index();
        // What the client would hold after this response; kept only when accepted.
        let mut next = held[i].clone();
        for name in &removed_resources {
            next.remove(name);
        }
        let mut missing = None;
        for r in resources {
            match r.resource {
                Some(any) => {
                    next.insert(r.name, (r.version, any));
                }
                None => missing = Some(r.name),
            }
        }
        let (nack, decoded) = match missing {
            Some(name) => (
                Some(format!("resource {name} has no body")),
                Decoded::default(),
            ),
            None => {
                let all: Vec<&Any> = next.values().map(|(_, a)| a).collect();
                judge(id, shared, &subs, kind, &all)
            }
        };
        if let Some(error) = nack {
            tx.send(DeltaDiscoveryRequest {
                type_url,
                response_nonce: nonce,
                error_detail: Some(nack_status(&error)),
                ..Default::default()
            })
            .await?;
            let _ = shared.events.send(Event::Nacked { id, kind, error });
            continue;
        }
        held[i] = next;
        for Ask {
            kind: k,
            added,
            removed,
            ..
        } in subs.follow(kind, &decoded)
        {
            tx.send(DeltaDiscoveryRequest {
                type_url: k.type_url().to_owned(),
                resource_names_subscribe: added,
                resource_names_unsubscribe: removed,
                ..Default::default()
            })
            .await?;
        }
        tx.send(DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            ..Default::default()
        })
        .await?;
        let at = Instant::now();
        report(id, shared, &mut subs, kind, &decoded, at);
        if subs.synced {
            permit.take();
        }
    }
    Ok(())
}

/// Where a client stands in the current change.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    route: Option<(Weights, Instant)>,
    ecds: Option<(Weights, Instant)>,
    ecds_expected: bool,
    synced: bool,
    nacker: bool,
}

impl Track {
    /// The instant the client had ACKed both resources with `target`, if it has since `t0`.
    fn done(&self, target: Weights, t0: Instant) -> Option<Instant> {
        let fresh = |seen: Option<(Weights, Instant)>| match seen {
            Some((w, at)) if w == target && at >= t0 => Some(at),
            _ => None,
        };
        let route = fresh(self.route)?;
        if !self.ecds_expected {
            return Some(route);
        }
        Some(route.max(fresh(self.ecds)?))
    }

    /// Whether the client holds `target` in both resources (whenever it got them).
    fn holds(&self, target: Weights) -> bool {
        let holds = |seen: Option<(Weights, Instant)>| seen.is_some_and(|(w, _)| w == target);
        holds(self.route) && (!self.ecds_expected || holds(self.ecds))
    }
}

/// The coordinator's state over all clients.
struct Fleet {
    tracks: Vec<Track>,
    nacks: u64,
    nack_errors: BTreeMap<String, u64>,
    /// Route or ECDS ACKs that carried weights other than the change's, after its `t0`.
    off_target: u64,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Fleet {
    /// Applies one event; a failed client fails the run.
    fn apply(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Synced { id, ecds } => {
                let t = &mut self.tracks[id];
                t.synced = true;
                t.ecds_expected = ecds;
            }
            Event::Seen {
                id,
                kind,
                weights,
                at,
            } => {
                let t = &mut self.tracks[id];
                let slot = if kind == Kind::Route {
                    &mut t.route
                } else {
                    &mut t.ecds
                };
                *slot = Some((weights, at));
            }
            Event::Nacked { id, kind, error } => {
                self.nacks += 1;
                let key = format!("{}: {error}", kind.short());
                if !self.tracks[id].nacker && self.nack_errors.is_empty() {
                    eprintln!("client {id} NACKed {key}");
                }
                *self.nack_errors.entry(key).or_default() += 1;
            }
            Event::Failed { id, error } => bail!("client {id} failed: {error}"),
        }
        Ok(())
    }

    /// Waits for the next event until `deadline`; false when the deadline passed.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Result<bool> {
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(event)) => {
                self.apply(event)?;
                Ok(true)
            }
            Ok(None) => bail!("every client is gone"),
            Err(_) => Ok(false),
        }
    }

    /// Applies whatever arrives for `d`.
    async fn drain_for(&mut self, d: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + d;
        while self.next(deadline).await? {}
        Ok(())
    }
}

/// Sets the weights through the admin API; returns the new version and the call's duration.
async fn put_weights(args: &Args, w: Weights) -> Result<(String, Duration)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let url = format!(
        "{}/v1/services/{}/weights",
        args.admin.trim_end_matches('/'),
        args.service
    );
    let body = json!({"weights": {"primary": w.primary, "shadow": w.shadow}}).to_string();
    let request = hyper::Request::builder()
        .method(hyper::Method::PUT)
        .uri(&url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("PUT request")?;
    let started = Instant::now();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("PUT body")?
        .to_bytes();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&bytes);
    ensure!(
        status == 200,
        "PUT {url} answered {status}: {}",
        text.trim_end()
    );
    let v: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("PUT {url}: not JSON: {text}"))?;
    let version = match &v["version"] {
        Value::String(s) => s.clone(),
        Value::Null => bail!("PUT {url}: no version in {text}"),
        other => other.to_string(),
    };
    Ok((version, took))
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(latencies_ms: &mut [f64]) -> Value {
    latencies_ms.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    json!({
        "count": latencies_ms.len(),
        "p50_ms": round(percentile(latencies_ms, 0.5)),
        "p99_ms": round(percentile(latencies_ms, 0.99)),
        "max_ms": round(latencies_ms.last().copied().unwrap_or(f64::NAN)),
    })
}

/// Prints one JSON line on stdout and, with `--wait-stdin`, waits for a line on stdin.
async fn emit(args: &Args, line: Value) -> Result<()> {
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").context("stdout")?;
        out.flush().context("stdout")?;
    }
    if args.wait_stdin {
        tokio::task::spawn_blocking(|| {
            let mut buf = String::new();
            std::io::stdin().read_line(&mut buf).map(|_| ())
        })
        .await
        .context("stdin task")?
        .context("stdin")?;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each client holds a socket.
fn raise_nofile(clients: usize) -> Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised).context("could not raise RLIMIT_NOFILE")?;
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    ensure!(
        now > clients as u64 + 64,
        "RLIMIT_NOFILE is {now}, too low for {clients} clients (raise the hard limit)"
    );
    Ok(now)
}

async fn run(args: Args) -> Result<()> {
    let initial = Weights::parse(&args.initial)?;
    let changes = args
        .changes
        .split(',')
        .map(Weights::parse)
        .collect::<Result<Vec<_>>>()?;
    ensure!(args.clients > 0, "--clients must be at least 1");
    let n = args.clients;
    let nofile = raise_nofile(n)?;
    let (events, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        args,
        events,
        counters: Counters::default(),
    });
    let args = &shared.args;
    let mut fleet = Fleet {
        tracks: (0..n)
            .map(|id| Track {
                nacker: is_nacker(args, id),
                ..Track::default()
            })
            .collect(),
        nacks: 0,
        nack_errors: BTreeMap::new(),
        off_target: 0,
        rx,
    };
    let awaited: Vec<usize> = (0..n).filter(|&id| !fleet.tracks[id].nacker).collect();

    // Ramp: at most `ramp_concurrency` clients are connecting or syncing at once.
    eprintln!(
        "ads_clients: {n} {} clients to {}",
        args.mode.name(),
        args.xds
    );
    let ramp_started = Instant::now();
    let ramp = Arc::new(Semaphore::new(args.ramp_concurrency.max(1)));
    for id in 0..n {
        tokio::spawn(client(id, Arc::clone(&shared), Arc::clone(&ramp)));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.ramp_timeout_secs);
    let mut last_print = Instant::now();
    loop {
        let synced = fleet
            .tracks
            .iter()
            .filter(|t| t.synced && t.holds(initial))
            .count();
        if synced == n {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "ads_clients: {synced}/{n} synced after {:.1} s",
                ramp_started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if !fleet.next(deadline).await? {
            let unsynced = fleet.tracks.iter().filter(|t| !t.synced).count();
            let off = fleet
                .tracks
                .iter()
                .filter(|t| t.synced && !t.holds(initial))
                .count();
            bail!(
                "after {} s, {synced} of {n} clients hold the initial weights {initial:?}: \
                 {unsynced} never had an ACK-able response of every type, {off} hold other \
                 weights; NACKs: {:?}",
                args.ramp_timeout_secs,
                fleet.nack_errors
            );
        }
    }
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    eprintln!("ads_clients: all {n} synced in {ramp_secs:.1} s");
    // Anything still in flight from the ramp lands before the server is sampled.
    fleet
        .drain_for(Duration::from_millis(args.settle_ms))
        .await?;
    let ramp_counters = shared.counters.snapshot();
    emit(
        args,
        json!({"event": "synced", "clients": n, "ramp_secs": ramp_secs}),
    )
    .await?;

    let before = shared.counters.snapshot();
    let mut all_latencies = Vec::new();
    let mut reports = Vec::new();
    let mut complete = true;
    for (k, &target) in changes.iter().enumerate() {
        let nacks_before = fleet.nacks;
        let off_before = fleet.off_target;
        let counters_before = shared.counters.snapshot();
        let t0 = Instant::now();
        let (version, put) = put_weights(args, target).await?;
        let deadline =
            tokio::time::Instant::from_std(t0) + Duration::from_secs(args.change_timeout_secs);
        let mut done: HashMap<usize, Duration> = HashMap::with_capacity(n);
        let mut timed_out = false;
        while done.len() < awaited.len() {
            // Each event touches one client: check only that one's progress.
            match tokio::time::timeout_at(deadline, fleet.rx.recv()).await {
                Ok(Some(event)) => {
                    let touched = match &event {
                        Event::Seen {
                            id, weights, at, ..
                        } => {
                            if *weights != target && *at >= t0 {
                                fleet.off_target += 1;
                            }
                            Some(*id)
                        }
                        _ => None,
                    };
                    fleet.apply(event)?;
                    if let Some(id) = touched {
                        let t = &fleet.tracks[id];
                        if !t.nacker
                            && !done.contains_key(&id)
                            && let Some(at) = t.done(target, t0)
                        {
                            done.insert(id, at - t0);
                        }
                    }
                }
                Ok(None) => bail!("every client is gone"),
                Err(_) => {
                    timed_out = true;
                    break;
                }
            }
        }
        let all_acked = t0.elapsed();
        fleet
            .drain_for(Duration::from_millis(args.settle_ms))
            .await?;
        let counters_after = shared.counters.snapshot();
        let mut latencies: Vec<f64> = done.values().map(|d| d.as_secs_f64() * 1e3).collect();
        all_latencies.extend_from_slice(&latencies);
        let missing = awaited.len() - done.len();
        complete &= missing == 0;
        let mut report = summary(&mut latencies);
        report["weights"] = target.json();
        report["version"] = json!(version);
        report["put_ms"] = json!(put.as_secs_f64() * 1e3);
        report["acked"] = json!(done.len());
        report["missing"] = json!(missing);
        report["timed_out"] = json!(timed_out);
        report["nacks"] = json!(fleet.nacks - nacks_before);
        report["off_target_acks"] = json!(fleet.off_target - off_before);
        report["pushes"] = counters_json(&counters_before, &counters_after);
        eprintln!(
            "ads_clients: change {}/{} to {}:{} (version {version}): {}/{} ACKed, p50 {} ms, \
             p99 {} ms, all in {:.0} ms",
            k + 1,
            changes.len(),
            target.primary,
            target.shadow,
            done.len(),
            awaited.len(),
            report["p50_ms"],
            report["p99_ms"],
            all_acked.as_secs_f64() * 1e3,
        );
        reports.push(report);
    }
    let after = shared.counters.snapshot();
    emit(args, json!({"event": "changed", "changes": changes.len()})).await?;

    let result = json!({
        "event": "result",
        "mode": args.mode.name(),
        "clients": n,
        "awaited_clients": awaited.len(),
        "nackers": n - awaited.len(),
        "nofile_limit": nofile,
        "ramp_secs": ramp_secs,
        "ramp_concurrency": args.ramp_concurrency,
        "initial_weights": initial.json(),
        "ramp_pushes": counters_json(&[[0; 3]; 5], &ramp_counters),
        "complete": complete,
        "latency": summary(&mut all_latencies),
        "changes": reports,
        "change_pushes": counters_json(&before, &after),
        "nacks": fleet.nacks,
        "nack_errors": fleet.nack_errors,
        "off_target_acks": fleet.off_target,
        "rss_kb": rss_kb(),
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{result}").context("stdout")?;
    out.flush().context("stdout")
}

/// This process's peak RSS in KB (`VmHWM`), for the record.
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?;
    runtime.block_on(run(args))?;
    // Closing thousands of connections one by one is not worth waiting for.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::core::v3::ExtensionConfigSource;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, VirtualHost, WeightedCluster,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter, Rds,
    };
    use envoy_types::pb::envoy::extensions::wasm::v3::PluginConfig;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use envoy_types::util::pack_any;

    fn kinds(asks: &[Ask]) -> Vec<Kind> {
        asks.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn follows_clusters_listeners_and_weights_as_envoy_would() {
        let eds = pack_any(Cluster {
            name: "checkout-blue".to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        });
        let fixed = pack_any(Cluster {
            name: "telemetry".to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
            ..Default::default()
        });
        let d = decode(
            Kind::Cluster,
            &[&eds, &fixed],
            "checkout-blue",
            "checkout-green",
        )
        .unwrap();
        assert_eq!(d.endpoints, Some(vec!["checkout-blue".to_owned()]));

        let mut subs = Subscriptions::new();
        subs.names[Kind::Cluster.index()] = Some(Vec::new());
        let asks = subs.follow(Kind::Cluster, &d);
        assert_eq!(
            kinds(&asks),
            [Kind::Endpoint],
            "EDS first, LDS once the clusters are warm"
        );
        assert_eq!(asks[0].added, ["checkout-blue"]);
        let asks = subs.follow(Kind::Endpoint, &Decoded::default());
        assert_eq!(kinds(&asks), [Kind::Listener]);

        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "ingress".to_owned(),
                ..Default::default()
            })),
            http_filters: vec![HttpFilter {
                name: "shadowplane.ingress".to_owned(),
                config_type: Some(HttpConfigType::ConfigDiscovery(
                    ExtensionConfigSource::default(),
                )),
                ..Default::default()
            }],
            ..Default::default()
        };
        let listener = pack_any(Listener {
            name: "ingress".to_owned(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "hcm".to_owned(),
                    config_type: Some(NetworkConfigType::TypedConfig(pack_any(hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let d = decode(Kind::Listener, &[&listener], "a", "b").unwrap();
        let asks = subs.follow(Kind::Listener, &d);
        assert_eq!(kinds(&asks), [Kind::Route, Kind::ExtensionConfig]);
        assert_eq!(asks[1].names, ["shadowplane.ingress"]);
        assert!(!subs.just_synced(), "routes and ECDS not yet accepted");
        subs.follow(Kind::Route, &Decoded::default());
        assert!(!subs.just_synced());
        subs.follow(Kind::ExtensionConfig, &Decoded::default());
        assert!(subs.just_synced());
        assert!(!subs.just_synced(), "only once");
        assert!(subs.ecds);

        let route = pack_any(RouteConfiguration {
            name: "ingress".to_owned(),
            virtual_hosts: vec![VirtualHost {
                routes: vec![Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(
                            WeightedCluster {
                                clusters: vec![ClusterWeight {
                                    name: "checkout-green".to_owned(),
                                    weight: Some(UInt32Value { value: 10 }),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let d = decode(Kind::Route, &[&route], "checkout-blue", "checkout-green").unwrap();
        assert_eq!(
            d.weights,
            Some(Weights {
                primary: 0,
                shadow: 10
            })
        );

        let json = r#"{"groups":[{"name":"checkout-blue","weight":90},{"name":"checkout-green","weight":10}],"routing":"random"}"#;
        let wasm = Wasm {
            config: Some(PluginConfig {
                configuration: Some(pack_any(StringValue {
                    value: json.to_owned(),
                })),
                ..Default::default()
            }),
        };
        let ecds = pack_any(TypedExtensionConfig {
            name: "shadowplane.ingress".to_owned(),
            typed_config: Some(pack_any(wasm)),
        });
        let d = decode(
            Kind::ExtensionConfig,
            &[&ecds],
            "checkout-blue",
            "checkout-green",
        )
        .unwrap();
        assert_eq!(
            d.weights,
            Some(Weights {
                primary: 90,
                shadow: 10
            })
        );

        let err = decode(Kind::Route, &[&ecds], "a", "b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("TypedExtensionConfig in a"), "{err}");
    }

    #[test]
    fn a_client_is_done_when_both_acks_carry_the_target_after_t0() {
        let t0 = Instant::now();
        let w = Weights {
            primary: 90,
            shadow: 10,
        };
        let old = Weights {
            primary: 100,
            shadow: 0,
        };
        let later = t0 + Duration::from_millis(5);
        let mut t = Track {
            route: Some((w, later)),
            ecds: Some((old, later)),
            ecds_expected: true,
            ..Track::default()
        };
        assert_eq!(t.done(w, t0), None);
        t.ecds = Some((w, later + Duration::from_millis(1)));
        assert_eq!(t.done(w, t0), Some(later + Duration::from_millis(1)));
        assert_eq!(
            t.done(w, later + Duration::from_millis(10)),
            None,
            "acked before t0"
        );
        assert!(t.holds(w) && !t.holds(old));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        assert!(Weights::parse("90:x").is_err());
    }
}
