//! `shadowplane.yaml`: the operator's file, parsed with unknown fields rejected, then checked.
//!
//! Every error names `file:line:column` and what is wrong. Syntax and type errors come with
//! serde's location; the cross-field checks (unique names, references, weights) find the
//! offending node again with [`locate`], because serde hands no spans to the types it builds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shadowplane_wire::{RoutingMode, SessionKey};

use crate::compare::ComparePolicy;
use crate::lifecycle;
use crate::provision::{GroupSpec, RecordedConfig, Variant};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Default address of the xDS gRPC server.
pub const DEFAULT_XDS_ADDRESS: &str = "127.0.0.1:18000";
/// Default address of the admin HTTP API (and of the telemetry endpoint the filter posts to).
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:18001";
/// The Envoy `node.cluster` a file configures when it does not say.
pub const DEFAULT_NODE_CLUSTER: &str = "shadowplane";

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The Envoy `node.cluster` (the bootstrap's `node.cluster`) these resources are for.
    /// Default: `shadowplane`.
    #[serde(default)]
    pub node_cluster: Option<String>,
    /// Where the xDS server listens. Default: `127.0.0.1:18000`.
    #[serde(default)]
    pub xds: Option<Endpoint>,
    /// Where the admin API listens. Default: `127.0.0.1:18001`.
    #[serde(default)]
    pub admin: Option<Endpoint>,
    /// The shadowplane Wasm filter. Optional: without it, routes split traffic with Envoy's
    /// `weighted_clusters` alone (no telemetry, no sticky sessions).
    #[serde(default)]
    pub filter: Option<FilterSection>,
    /// Where telemetry is kept. Default: `shadowplane.redb` beside this file, 7 days.
    #[serde(default)]
    pub store: Option<StoreSection>,
    /// The listeners Envoy opens. Required, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The services, each on one listener, with their groups. Required, at least one.
    pub services: Vec<ServiceConfig>,
}

/// A socket address to listen on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `IP:PORT`.
    pub address: SocketAddr,
}

/// How Envoy loads the filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    /// Path of the filter's `.wasm`, relative to this file's folder. Required.
    pub wasm: PathBuf,
    /// `sticky` (default: a session stays on its group while the shadow's share rises, as
    /// warm-up and shifting want) or `random` (weighted per request).
    #[serde(default)]
    pub routing: Option<RoutingMode>,
    /// `{header: NAME}` or `{cookie: NAME}`, for sticky routing. Default: `{header:
    /// x-session-id}`. Requests without the key are routed by weight, one by one.
    #[serde(default)]
    pub session_key: Option<SessionKeySection>,
    /// Milliseconds between the filter's telemetry reports. Default: 1000.
    #[serde(default)]
    pub report_interval_ms: Option<u64>,
    /// Bearer token the filter sends with its reports. Default: none (reports are accepted
    /// without a token).
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Where Envoy reaches the telemetry endpoint. Default: the admin address.
    #[serde(default)]
    pub telemetry_address: Option<SocketAddr>,
}

/// The telemetry store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The redb database file, relative to this file's folder. Default: `shadowplane.redb`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Hours of telemetry kept. Default: 168 (7 days).
    #[serde(default)]
    pub retention_hours: Option<u64>,
}

/// The session key header of sticky routing when the configuration names none.
pub const DEFAULT_SESSION_HEADER: &str = "x-session-id";

/// Where the sticky session key comes from: exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKeySection {
    /// A request header, by name.
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie, by name.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// One Envoy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Listener name, unique. Required.
    pub name: String,
    /// `IP:PORT` Envoy binds. Required.
    pub address: SocketAddr,
}

/// A service: the routes that reach it and the resource groups behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name, unique; the CLI's `weights set SERVICE`. Required.
    pub name: String,
    /// The listener it is served on. Required. One service per listener: the filter's weight
    /// set is per listener.
    pub listener: String,
    /// Virtual host domains. Default: `["*"]`.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// Path prefixes routed to the service. Default: `["/"]`.
    #[serde(default)]
    pub prefixes: Option<Vec<String>>,
    /// The resource groups (Envoy clusters). Exactly one `primary`; at most one `shadow` and
    /// one `standby`. Required, unless `lifecycle` provisions them.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// Percent per role, summing to 100. Default: `{primary: 100}`. Not with `lifecycle`.
    #[serde(default)]
    pub weights: Option<BTreeMap<Role, u32>>,
    /// The shadow lifecycle: groups provisioned by the control plane, a shadow kept for the
    /// primary, and predictive migrations. Default: none (groups and weights by hand).
    #[serde(default)]
    pub lifecycle: Option<LifecycleSection>,
}

/// A managed service's lifecycle, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSection {
    /// The provisioner that runs the groups: `local` (processes on this host). Default: `local`.
    #[serde(default)]
    pub provisioner: Option<String>,
    /// The primary's configuration; the shadow mirrors it. Required.
    pub group: RecordedConfig,
    /// What the shadow may run differently (instance type, price class). Default: nothing.
    #[serde(default)]
    pub shadow_variant: Option<Variant>,
    /// Price per instance-hour by instance type, for the cost model. Default: none (cost is
    /// not tracked).
    #[serde(default)]
    pub prices: Option<BTreeMap<String, f64>>,
    /// Phases, steps and timers. Default: see `lifecycle::Policy`.
    #[serde(default)]
    pub policy: Option<lifecycle::Policy>,
    /// When to migrate: SLOs, cost budget, horizon, confidence. Default: the model's defaults.
    #[serde(default)]
    pub trigger: Option<shadowplane_model::trigger::Policy>,
    /// When the shadow counts as worse during warm-up and shifting. Default: see
    /// `compare::ComparePolicy`.
    #[serde(default)]
    pub compare: Option<ComparePolicy>,
    /// The forecasters' parameters, in telemetry windows. Default: the model's defaults, except
    /// that `bound_horizon` is always on and `select_horizon` defaults to the trigger's
    /// horizon (the trigger reads multi-step intervals).
    #[serde(default)]
    pub model: Option<shadowplane_model::ForecasterParams>,
    /// How often the engine looks at the service, milliseconds. Default: 1000.
    #[serde(default)]
    pub tick_ms: Option<u64>,
}

/// A checked lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    /// The provisioner's kind.
    pub provisioner: String,
    /// The primary's recorded configuration.
    pub group: RecordedConfig,
    /// The shadow's variant.
    pub variant: Option<Variant>,
    /// Prices per instance-hour; none when cost is not tracked.
    pub prices: Option<shadowplane_model::cost::ValidPriceTable>,
    /// Phases and timers.
    pub policy: lifecycle::Policy,
    /// The trigger's policy.
    pub trigger: shadowplane_model::trigger::ValidPolicy,
    /// The comparison's policy.
    pub compare: ComparePolicy,
    /// The forecasters' parameters.
    pub model: shadowplane_model::ValidForecasterParams,
    /// The latency detector's parameters (3 sigma, with `model`'s forecaster).
    pub detector: shadowplane_model::ValidDetectorParams,
    /// Engine tick, milliseconds.
    pub tick_ms: u64,
}

/// A resource group: one Envoy cluster and the machines behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Envoy cluster name, unique across the file. Required.
    pub name: String,
    /// Its role in the service. Required.
    pub role: Role,
    /// Static endpoints, `IP:PORT`. Required, at least one.
    pub endpoints: Vec<SocketAddr>,
    /// Upstream connect timeout in milliseconds. Default: 1000.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

/// What a group does for its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves the traffic.
    Primary,
    /// Learns from the primary, takes traffic during a migration.
    Shadow,
    /// The former primary, kept configured after a cutover.
    Standby,
}

impl Role {
    /// All roles, in display order.
    pub const ALL: [Role; 3] = [Role::Primary, Role::Shadow, Role::Standby];

    /// The lower-case name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Shadow => "shadow",
            Role::Standby => "standby",
        }
    }

    /// Parses a lower-case role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Envoy node cluster the resources are for.
    pub node_cluster: String,
    /// xDS listen address.
    pub xds_address: SocketAddr,
    /// Admin API listen address.
    pub admin_address: SocketAddr,
    /// The filter, if loaded.
    pub filter: Option<Filter>,
    /// The telemetry database file.
    pub store_path: PathBuf,
    /// How long telemetry is kept, in milliseconds.
    pub retention_ms: u64,
    /// Listeners, in file order.
    pub listeners: Vec<Listener>,
    /// Services, in file order.
    pub services: Vec<Service>,
}

/// The checked filter section.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Absolute (or config-relative resolved) path of the `.wasm`.
    pub wasm: PathBuf,
    /// Routing mode.
    pub routing: RoutingMode,
    /// Session key for sticky routing.
    pub session_key: Option<SessionKey>,
    /// Report interval in milliseconds.
    pub report_interval_ms: u64,
    /// Bearer token for reports.
    pub auth_token: Option<String>,
    /// Address Envoy posts telemetry to.
    pub telemetry_address: SocketAddr,
}

/// A checked listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Name.
    pub name: String,
    /// Bind address.
    pub address: SocketAddr,
}

/// A checked service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Listener name.
    pub listener: String,
    /// Virtual host domains.
    pub domains: Vec<String>,
    /// Path prefixes.
    pub prefixes: Vec<String>,
    /// Groups, primary first, then shadow, then standby.
    pub groups: Vec<Group>,
    /// Percent per role (every role of `groups` present), summing to 100.
    pub weights: Weights,
    /// Percent of the requests mirrored (Envoy request mirroring) to the idle group: the
    /// shadow, or the primary when the shadow's weight is 100 (standby).
    pub mirror_percent: u32,
    /// The lifecycle, when the control plane provisions the groups; the engine fills in
    /// `groups`, `weights` and `mirror_percent`.
    pub managed: Option<Managed>,
}

/// A checked group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Envoy cluster name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Connect timeout in milliseconds.
    pub connect_timeout_ms: u64,
}

/// Percent of traffic per role; always sums to 100 over the roles present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Weights(BTreeMap<Role, u32>);

impl Weights {
    /// Checks `weights` against the roles a service has. The error says what is wrong, without
    /// a location (callers add it).
    pub fn check(weights: &BTreeMap<Role, u32>, roles: &BTreeSet<Role>) -> Result<Weights, String> {
        for (role, w) in weights {
            if !roles.contains(role) {
                return Err(format!("the service has no {role} group"));
            }
            if *w > 100 {
                return Err(format!("{role} weight {w} is above 100"));
            }
        }
        let sum: u32 = weights.values().sum();
        if sum != 100 {
            return Err(format!("weights sum to {sum}, not 100"));
        }
        Ok(Weights(
            roles
                .iter()
                .map(|r| (*r, weights.get(r).copied().unwrap_or(0)))
                .collect(),
        ))
    }

    /// `shadow_percent` on the shadow (when there is one), the rest on the primary.
    pub fn split(shadow_percent: u32, has_shadow: bool) -> Weights {
        let shadow = if has_shadow {
            shadow_percent.min(100)
        } else {
            0
        };
        let mut w = BTreeMap::from([(Role::Primary, 100 - shadow)]);
        if has_shadow {
            w.insert(Role::Shadow, shadow);
        }
        Weights(w)
    }

    /// Role to percent.
    pub fn as_map(&self) -> BTreeMap<Role, u32> {
        self.0.clone()
    }

    /// The weight of `role` (0 when absent).
    pub fn get(&self, role: Role) -> u32 {
        self.0.get(&role).copied().unwrap_or(0)
    }

    /// Role and weight pairs.
    pub fn iter(&self) -> impl Iterator<Item = (Role, u32)> + '_ {
        self.0.iter().map(|(r, w)| (*r, *w))
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (r, w) in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{r}={w}")?;
        }
        Ok(())
    }
}

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when the file could not be read.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A step of a path into the YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A mapping key.
    Key(&'static str),
    /// A sequence index.
    Index(usize),
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and checks `text`, naming `path` in errors and resolving the filter's `.wasm`
/// against `path`'s folder.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file: FileConfig = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            // serde_yaml_ng appends " at line L column C"; the prefix already says it.
            message: strip_location(&e.to_string()),
        }
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    check(file, base).map_err(|(at, message)| {
        let (line, column) = locate(text, &at).unwrap_or((1, 1));
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            message,
        }
    })
}

fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

type CheckError = (Vec<Step>, String);

fn at(steps: &[Step], message: impl Into<String>) -> CheckError {
    (steps.to_vec(), message.into())
}

fn check(file: FileConfig, base: &Path) -> Result<Config, CheckError> {
    use Step::{Index, Key};
    let node_cluster = file
        .node_cluster
        .unwrap_or_else(|| DEFAULT_NODE_CLUSTER.to_string());
    if node_cluster.is_empty() {
        return Err(at(&[Key("node_cluster")], "must not be empty"));
    }
    let parse_default = |s: &str| s.parse::<SocketAddr>().ok();
    let xds_address = match file.xds {
        Some(e) => e.address,
        None => parse_default(DEFAULT_XDS_ADDRESS).ok_or_else(|| at(&[], "bad default"))?,
    };
    let admin_address = match file.admin {
        Some(e) => e.address,
        None => parse_default(DEFAULT_ADMIN_ADDRESS).ok_or_else(|| at(&[], "bad default"))?,
    };
    if xds_address == admin_address {
        return Err(at(
            &[Key("admin"), Key("address")],
            "the admin API and the xDS server need different addresses",
        ));
    }

    let filter = match file.filter {
        None => None,
        Some(f) => {
            let wasm = if f.wasm.is_absolute() {
                f.wasm.clone()
            } else {
                base.join(&f.wasm)
            };
            if !wasm.is_file() {
                return Err(at(
                    &[Key("filter"), Key("wasm")],
                    format!("no file at {}", wasm.display()),
                ));
            }
            let session_key = match f.session_key {
                None => None,
                Some(SessionKeySection {
                    header: Some(h),
                    cookie: None,
                }) => Some(SessionKey::Header(h)),
                Some(SessionKeySection {
                    header: None,
                    cookie: Some(c),
                }) => Some(SessionKey::Cookie(c)),
                Some(_) => {
                    return Err(at(
                        &[Key("filter"), Key("session_key")],
                        "give exactly one of header and cookie",
                    ));
                }
            };
            if let Some(SessionKey::Header(n) | SessionKey::Cookie(n)) = &session_key
                && !is_name(n)
            {
                return Err(at(
                    &[Key("filter"), Key("session_key")],
                    format!("\"{n}\" is not a valid header or cookie name"),
                ));
            }
            let (routing, session_key) = match (f.routing, session_key) {
                (Some(RoutingMode::Random), Some(_)) => {
                    return Err(at(
                        &[Key("filter"), Key("session_key")],
                        "a session_key is only used with routing: sticky",
                    ));
                }
                (Some(RoutingMode::Random), None) => (RoutingMode::Random, None),
                (_, Some(k)) => (RoutingMode::Sticky, Some(k)),
                (_, None) => (
                    RoutingMode::Sticky,
                    Some(SessionKey::Header(DEFAULT_SESSION_HEADER.to_string())),
                ),
            };
            let report_interval_ms = f
                .report_interval_ms
                .unwrap_or(shadowplane_wire::DEFAULT_REPORT_INTERVAL_MS);
            if !(100..=600_000).contains(&report_interval_ms) {
                return Err(at(
                    &[Key("filter"), Key("report_interval_ms")],
                    format!("{report_interval_ms} is outside 100..=600000"),
                ));
            }
            Some(Filter {
                wasm,
                routing,
                session_key,
                report_interval_ms,
                auth_token: f.auth_token,
                telemetry_address: f.telemetry_address.unwrap_or(admin_address),
            })
        }
    };

    let (store_path, retention_hours) = match file.store {
        None => (None, None),
        Some(s) => (s.path, s.retention_hours),
    };
    let store_path = store_path.unwrap_or_else(|| PathBuf::from("shadowplane.redb"));
    let store_path = if store_path.is_absolute() {
        store_path
    } else {
        base.join(store_path)
    };
    let retention_hours = retention_hours.unwrap_or(168);
    if retention_hours == 0 {
        return Err(at(
            &[Key("store"), Key("retention_hours")],
            "must be at least 1",
        ));
    }

    if file.listeners.is_empty() {
        return Err(at(&[Key("listeners")], "at least one listener is required"));
    }
    let mut listeners = Vec::new();
    let mut listener_names = BTreeSet::new();
    let mut listener_addrs = BTreeSet::new();
    for (i, l) in file.listeners.into_iter().enumerate() {
        let here = [Key("listeners"), Index(i)];
        if !is_name(&l.name) {
            return Err(at(
                &[here[0].clone(), here[1].clone(), Key("name")],
                format!(
                    "\"{}\" is not a valid name (letters, digits, - _ .)",
                    l.name
                ),
            ));
        }
        if !listener_names.insert(l.name.clone()) {
            return Err(at(
                &[here[0].clone(), here[1].clone(), Key("name")],
                format!("listener \"{}\" is defined twice", l.name),
            ));
        }
        if !listener_addrs.insert(l.address) {
            return Err(at(
                &[here[0].clone(), here[1].clone(), Key("address")],
                format!("two listeners bind {}", l.address),
            ));
        }
        if l.address == xds_address || l.address == admin_address {
            return Err(at(
                &[here[0].clone(), here[1].clone(), Key("address")],
                format!("{} is the control plane's own address", l.address),
            ));
        }
        listeners.push(Listener {
            name: l.name,
            address: l.address,
        });
    }

    if file.services.is_empty() {
        return Err(at(&[Key("services")], "at least one service is required"));
    }
    let mut services = Vec::new();
    let mut service_names = BTreeSet::new();
    let mut group_names = BTreeSet::new();
    let mut used_listeners = BTreeSet::new();
    for (i, s) in file.services.into_iter().enumerate() {
        let path = |k: &'static str| vec![Key("services"), Index(i), Key(k)];
        if !is_name(&s.name) {
            return Err(at(
                &path("name"),
                format!(
                    "\"{}\" is not a valid name (letters, digits, - _ .)",
                    s.name
                ),
            ));
        }
        if !service_names.insert(s.name.clone()) {
            return Err(at(
                &path("name"),
                format!("service \"{}\" is defined twice", s.name),
            ));
        }
        if !listener_names.contains(&s.listener) {
            return Err(at(
                &path("listener"),
                format!("no listener named \"{}\"", s.listener),
            ));
        }
        if !used_listeners.insert(s.listener.clone()) {
            return Err(at(
                &path("listener"),
                format!(
                    "listener \"{}\" already serves another service (one service per listener: \
                     the filter's weights are per listener)",
                    s.listener
                ),
            ));
        }
        let domains = s.domains.unwrap_or_else(|| vec!["*".to_string()]);
        if domains.is_empty() || domains.iter().any(|d| d.is_empty()) {
            return Err(at(&path("domains"), "domains must be non-empty strings"));
        }
        let prefixes = s.prefixes.unwrap_or_else(|| vec!["/".to_string()]);
        if prefixes.is_empty() {
            return Err(at(&path("prefixes"), "at least one prefix is required"));
        }
        for (j, p) in prefixes.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(at(
                    &[Key("services"), Index(i), Key("prefixes"), Index(j)],
                    format!("prefix \"{p}\" must start with /"),
                ));
            }
        }
        if let Some(l) = s.lifecycle {
            if !s.groups.is_empty() {
                return Err(at(
                    &path("groups"),
                    "a service with a lifecycle has its groups provisioned; remove `groups`",
                ));
            }
            if s.weights.is_some() {
                return Err(at(
                    &path("weights"),
                    "a service with a lifecycle has its weights set by the lifecycle; remove \
                     `weights`",
                ));
            }
            let managed = check_lifecycle(&s.name, l).map_err(|(k, m)| {
                let mut p = path("lifecycle");
                p.extend(k);
                (p, m)
            })?;
            for n in 1..=2 {
                group_names.insert(format!("{}-{n}", s.name));
            }
            services.push(Service {
                name: s.name,
                listener: s.listener,
                domains,
                prefixes,
                groups: Vec::new(),
                weights: Weights(BTreeMap::from([(Role::Primary, 100)])),
                mirror_percent: 0,
                managed: Some(managed),
            });
            continue;
        }
        let mut roles = BTreeSet::new();
        let mut groups = Vec::new();
        for (j, g) in s.groups.into_iter().enumerate() {
            let gpath =
                |k: &'static str| vec![Key("services"), Index(i), Key("groups"), Index(j), Key(k)];
            if !is_name(&g.name) {
                return Err(at(
                    &gpath("name"),
                    format!(
                        "\"{}\" is not a valid cluster name (letters, digits, - _ .)",
                        g.name
                    ),
                ));
            }
            if !group_names.insert(g.name.clone()) {
                return Err(at(
                    &gpath("name"),
                    format!("group \"{}\" is defined twice", g.name),
                ));
            }
            if !roles.insert(g.role) {
                return Err(at(
                    &gpath("role"),
                    format!("service \"{}\" has two {} groups", s.name, g.role),
                ));
            }
            if g.endpoints.is_empty() {
                return Err(at(&gpath("endpoints"), "at least one endpoint is required"));
            }
            let connect_timeout_ms = g.connect_timeout_ms.unwrap_or(1000);
            if connect_timeout_ms == 0 {
                return Err(at(&gpath("connect_timeout_ms"), "must be above 0"));
            }
            groups.push(Group {
                name: g.name,
                role: g.role,
                endpoints: g.endpoints,
                connect_timeout_ms,
            });
        }
        if !roles.contains(&Role::Primary) {
            return Err(at(
                &path("groups"),
                format!("service \"{}\" has no primary group", s.name),
            ));
        }
        groups.sort_by_key(|g| g.role);
        let raw = s
            .weights
            .unwrap_or_else(|| BTreeMap::from([(Role::Primary, 100)]));
        let weights = Weights::check(&raw, &roles).map_err(|m| at(&path("weights"), m))?;
        services.push(Service {
            name: s.name,
            listener: s.listener,
            domains,
            prefixes,
            groups,
            weights,
            mirror_percent: 0,
            managed: None,
        });
    }
    Ok(Config {
        node_cluster,
        xds_address,
        admin_address,
        filter,
        store_path,
        retention_ms: retention_hours.saturating_mul(3_600_000),
        listeners,
        services,
    })
}

/// Checks a lifecycle section; errors are located below `lifecycle`.
fn check_lifecycle(service: &str, l: LifecycleSection) -> Result<Managed, CheckError> {
    use Step::Key;
    let provisioner = l.provisioner.unwrap_or_else(|| "local".to_string());
    if provisioner != "local" {
        return Err(at(
            &[Key("provisioner")],
            format!(
                "the {provisioner:?} provisioner cannot run a lifecycle (it cannot create a \
                 shadow); only \"local\" can"
            ),
        ));
    }
    let spec = GroupSpec {
        name: format!("{service}-1"),
        config: l.group.clone(),
    };
    spec.check()
        .map_err(|e| at(&[Key("group")], e.to_string()))?;
    let prices = l.prices.unwrap_or_default();
    let variant_type = l
        .shadow_variant
        .as_ref()
        .and_then(|v| v.instance_type.clone());
    if !prices.is_empty() {
        for t in std::iter::once(l.group.instance_type.clone()).chain(variant_type) {
            if !prices.contains_key(&t) {
                return Err(at(
                    &[Key("prices")],
                    format!("no price for instance type {t:?}"),
                ));
            }
        }
    }
    let priced = !prices.is_empty();
    let prices = priced
        .then(|| {
            shadowplane_model::cost::PriceTable { per_hour: prices }
                .check()
                .map_err(|e| at(&[Key("prices")], e.to_string()))
        })
        .transpose()?;
    let policy = l.policy.unwrap_or_default();
    policy.check().map_err(|m| at(&[Key("policy")], m))?;
    let trigger = l
        .trigger
        .unwrap_or_default()
        .check()
        .map_err(|e| at(&[Key("trigger")], e.to_string()))?;
    if trigger.get().cost_budget_per_hour.is_some() && !priced {
        return Err(at(
            &[Key("trigger")],
            "cost_budget_per_hour needs `prices` to price the groups",
        ));
    }
    let compare = l.compare.unwrap_or_default();
    compare.check().map_err(|m| at(&[Key("compare")], m))?;
    // The trigger reads intervals up to its horizon: multi-step forecasts stay bounded, and
    // the model is chosen on its errors over that horizon unless the config says otherwise.
    let model = l.model.unwrap_or_default();
    let select_horizon = model.select_horizon.or(Some(
        trigger.get().horizon.clamp(1, model.max_horizon.max(1)),
    ));
    let model = shadowplane_model::ForecasterParams {
        bound_horizon: true,
        select_horizon,
        ..model
    }
    .check()
    .map_err(|e| at(&[Key("model")], e.to_string()))?;
    // The anomaly detector scores one-step residuals: its model is chosen one step ahead.
    let detector = shadowplane_model::DetectorParams {
        forecaster: shadowplane_model::ForecasterParams {
            select_horizon: None,
            ..model.get().clone()
        },
        ..Default::default()
    }
    .check()
    .map_err(|e| at(&[Key("model")], e.to_string()))?;
    let tick_ms = l.tick_ms.unwrap_or(1000);
    if tick_ms == 0 {
        return Err(at(&[Key("tick_ms")], "must be above 0"));
    }
    Ok(Managed {
        provisioner,
        group: l.group,
        variant: l.shadow_variant,
        prices,
        policy,
        trigger,
        compare,
        model,
        detector,
        tick_ms,
    })
}

/// Names that are safe as Envoy resource names, stat names and in a header regex.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Finds the 1-based line and column of the node at `path` (of its key, for mapping entries).
pub fn locate(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    let mut finder = Finder {
        target: path.to_vec(),
        stack: Vec::new(),
        found: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut finder, false).ok()?;
    finder.found
}

enum Frame {
    Map {
        key: Option<String>,
        expect_key: bool,
        key_mark: Option<Marker>,
    },
    Seq {
        index: usize,
    },
}

struct Finder {
    target: Vec<Step>,
    stack: Vec<Frame>,
    found: Option<(usize, usize)>,
}

impl Finder {
    /// The path of the node about to start, with the mark to report for it.
    fn current_path(&self) -> Vec<Step> {
        let mut out = Vec::new();
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k), .. } => {
                    // Only keys the target can name matter; others never match.
                    match self.target.get(out.len()) {
                        Some(Step::Key(t)) if *t == k => out.push(Step::Key(t)),
                        _ => out.push(Step::Key("\u{0}")),
                    }
                }
                Frame::Map { key: None, .. } => out.push(Step::Key("\u{0}")),
                Frame::Seq { index } => out.push(Step::Index(*index)),
            }
        }
        out
    }

    /// Called when a value node (scalar, sequence or mapping) starts at `mark`.
    fn on_value(&mut self, mark: Marker) {
        if self.found.is_some() {
            return;
        }
        if self.current_path() == self.target {
            let m = match self.stack.last() {
                Some(Frame::Map {
                    key_mark: Some(k), ..
                }) => *k,
                _ => mark,
            };
            self.found = Some((m.line(), m.col() + 1));
        }
    }

    /// After a value node ends: advance the parent.
    fn after_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map {
                key,
                expect_key,
                key_mark,
            }) => {
                *key = None;
                *key_mark = None;
                *expect_key = true;
            }
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Finder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // A scalar in key position names the next value.
        if let Some(Frame::Map {
            expect_key: true, ..
        }) = self.stack.last()
        {
            match &ev {
                Event::Scalar(s, ..) => {
                    if let Some(Frame::Map {
                        key,
                        expect_key,
                        key_mark,
                    }) = self.stack.last_mut()
                    {
                        *key = Some(s.clone());
                        *expect_key = false;
                        *key_mark = Some(mark);
                    }
                    return;
                }
                Event::MappingEnd => {
                    self.stack.pop();
                    self.after_value();
                    return;
                }
                _ => {}
            }
        }
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                self.on_value(mark);
                self.after_value();
            }
            Event::MappingStart(..) => {
                self.on_value(mark);
                self.stack.push(Frame::Map {
                    key: None,
                    expect_key: true,
                    key_mark: None,
                });
            }
            Event::SequenceStart(..) => {
                self.on_value(mark);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
                self.after_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
listeners:
  - name: ingress
    address: 127.0.0.1:10000
services:
  - name: checkout
    listener: ingress
    groups:
      - name: checkout-blue
        role: primary
        endpoints: [127.0.0.1:8081]
      - name: checkout-green
        role: shadow
        endpoints: [127.0.0.1:8082]
    weights: {primary: 90, shadow: 10}
";

    fn err(text: &str) -> String {
        parse(Path::new("sp.yaml"), text).unwrap_err().to_string()
    }

    const MANAGED: &str = "\
listeners:
  - name: ingress
    address: 127.0.0.1:10000
services:
  - name: checkout
    listener: ingress
    lifecycle:
      group:
        workload: {command: {program: /bin/true}}
        instance_type: large
      shadow_variant: {instance_type: small}
      prices: {large: 0.5, small: 0.2}
";

    #[test]
    fn a_lifecycle_replaces_groups_and_is_checked_with_places() {
        let c = parse(Path::new("sp.yaml"), MANAGED).unwrap();
        let m = c.services[0].managed.as_ref().unwrap();
        assert_eq!(m.provisioner, "local");
        assert_eq!(m.policy.cold_ms, 24 * 3_600_000);
        assert!(c.services[0].groups.is_empty());
        let with_groups = MANAGED.replace(
            "    lifecycle:\n",
            "    groups: [{name: a, role: primary, endpoints: [127.0.0.1:1]}]\n    lifecycle:\n",
        );
        assert!(
            err(&with_groups).contains("sp.yaml:7:5: a service with a lifecycle"),
            "{}",
            err(&with_groups)
        );
        let unpriced = MANAGED.replace("large: 0.5, ", "");
        assert_eq!(
            err(&unpriced),
            "sp.yaml:12:7: no price for instance type \"large\""
        );
        let bad_steps = MANAGED.replace(
            "      prices:",
            "      policy: {steps: [10, 5, 100]}\n      prices:",
        );
        assert!(
            err(&bad_steps).contains("steps: must rise strictly"),
            "{}",
            err(&bad_steps)
        );
        let fixed = MANAGED.replace("      group:", "      provisioner: fixed\n      group:");
        assert!(
            err(&fixed).contains("cannot run a lifecycle"),
            "{}",
            err(&fixed)
        );
    }

    #[test]
    fn routing_is_sticky_on_x_session_id_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"\0asm").unwrap();
        let path = dir.path().join("sp.yaml");
        let with = |filter: &str| {
            let text = format!("filter: {{wasm: f.wasm{filter}}}\n{GOOD}");
            parse(&path, &text).map(|c| {
                let f = c.filter.unwrap();
                (f.routing, f.session_key)
            })
        };
        let header = |h: &str| Some(SessionKey::Header(h.into()));
        assert_eq!(
            with("").unwrap(),
            (RoutingMode::Sticky, header(DEFAULT_SESSION_HEADER))
        );
        assert_eq!(
            with(", routing: sticky").unwrap(),
            (RoutingMode::Sticky, header("x-session-id"))
        );
        assert_eq!(
            with(", session_key: {cookie: sid}").unwrap(),
            (RoutingMode::Sticky, Some(SessionKey::Cookie("sid".into())))
        );
        assert_eq!(
            with(", routing: random").unwrap(),
            (RoutingMode::Random, None)
        );
        let e = with(", routing: random, session_key: {header: a}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only used with routing: sticky"), "{e}");
    }

    #[test]
    fn good_file_parses_with_defaults() {
        let c = parse(Path::new("sp.yaml"), GOOD).unwrap();
        assert_eq!(c.node_cluster, "shadowplane");
        assert_eq!(c.xds_address.to_string(), DEFAULT_XDS_ADDRESS);
        assert_eq!(c.services[0].weights.get(Role::Primary), 90);
        assert_eq!(c.services[0].weights.get(Role::Shadow), 10);
        assert_eq!(c.services[0].prefixes, vec!["/"]);
        assert_eq!(c.services[0].domains, vec!["*"]);
        assert!(c.filter.is_none());
    }

    #[test]
    fn unknown_field_is_named_with_its_place() {
        let text = GOOD.replace(
            "    listener: ingress\n",
            "    listener: ingress\n    colour: red\n",
        );
        let e = err(&text);
        assert!(e.starts_with("sp.yaml:7:5: "), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn bad_endpoint_is_located() {
        let text = GOOD.replace("[127.0.0.1:8082]", "[127.0.0.1:99999]");
        let e = err(&text);
        assert!(e.starts_with("sp.yaml:13:"), "{e}");
        assert!(e.contains("invalid socket address"), "{e}");
    }

    #[test]
    fn cross_field_errors_are_located() {
        let cases = [
            (
                GOOD.replace("listener: ingress", "listener: egress"),
                "sp.yaml:6:5: no listener named \"egress\"",
            ),
            (
                GOOD.replace("shadow: 10}", "shadow: 20}"),
                "sp.yaml:14:5: weights sum to 110, not 100",
            ),
            (
                GOOD.replace("name: checkout-green", "name: checkout-blue"),
                "sp.yaml:11:9: group \"checkout-blue\" is defined twice",
            ),
            (
                GOOD.replace("role: shadow", "role: primary"),
                "sp.yaml:12:9: service \"checkout\" has two primary groups",
            ),
            (
                GOOD.replace("[127.0.0.1:8082]", "[]"),
                "sp.yaml:13:9: at least one endpoint is required",
            ),
            (
                GOOD.replace("name: ingress", "name: in gress"),
                "sp.yaml:2:5: \"in gress\" is not a valid name",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.starts_with(want), "want {want}\n got {e}");
        }
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = load(Path::new("/nonexistent/sp.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/sp.yaml: cannot read the file"),
            "{e}"
        );
    }

    #[test]
    fn weights_check() {
        let roles = BTreeSet::from([Role::Primary, Role::Shadow]);
        let w = Weights::check(&BTreeMap::from([(Role::Primary, 100)]), &roles).unwrap();
        assert_eq!(w.to_string(), "primary=100 shadow=0");
        assert!(
            Weights::check(&BTreeMap::from([(Role::Standby, 100)]), &roles)
                .unwrap_err()
                .contains("no standby group")
        );
        assert!(
            Weights::check(&BTreeMap::from([(Role::Primary, 101)]), &roles)
                .unwrap_err()
                .contains("above 100")
        );
    }

    #[test]
    fn locate_finds_keys_and_items() {
        let t = "a:\n  b: [x, y]\n  c:\n    - d: 1\n    - e: 2\n";
        assert_eq!(locate(t, &[Step::Key("a")]), Some((1, 1)));
        assert_eq!(
            locate(t, &[Step::Key("a"), Step::Key("b"), Step::Index(1)]),
            Some((2, 10))
        );
        assert_eq!(
            locate(
                t,
                &[
                    Step::Key("a"),
                    Step::Key("c"),
                    Step::Index(1),
                    Step::Key("e")
                ]
            ),
            Some((5, 7))
        );
        assert_eq!(locate(t, &[Step::Key("z")]), None);
    }
}
