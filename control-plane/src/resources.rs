//! Envoy resources for a checked configuration and the current weights: clusters, endpoints,
//! listeners, routes and the filter's ECDS configuration, built as one consistent snapshot.
//!
//! A weight change touches two resources only, the service's route (`weighted_clusters`, the
//! fallback when the filter is not loaded) and the filter's ECDS configuration (the weights it
//! routes by, sticky or random); both carry the same weights and go out in one snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, AsyncDataSource, ConfigSource, DataSource,
    ExtensionConfigSource, Http2ProtocolOptions, RuntimeFractionalPercent, SocketAddress,
    TypedExtensionConfig, address::Address as AddressKind,
    async_data_source::Specifier as AsyncSpecifier, config_source::ConfigSourceSpecifier,
    data_source::Specifier as DataSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter::ConfigType as NetworkConfigType,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    route::Action,
    route_action::{ClusterSpecifier, RequestMirrorPolicy},
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType as HttpConfigType,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, VmConfig, plugin_config::Vm,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{Any, Duration, StringValue, UInt32Value};
use envoy_types::util::pack_any;
use shadowplane_wire::{FilterConfig, GroupWeight, TelemetryTarget};
use shadowplane_xds::{Snapshot, SnapshotBuilder};

use crate::config::{Config, Filter as FilterSettings, Role, Service, Weights};

/// Envoy cluster that carries the filter's telemetry reports to the control plane.
pub const TELEMETRY_CLUSTER: &str = "shadowplane-telemetry";
/// Name of the filter in every HTTP connection manager, and prefix of its ECDS resources.
pub const FILTER_NAME: &str = "shadowplane";
/// The Wasm filter's type URL, which ECDS configs must carry.
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The ECDS resource name of the filter on `listener`.
pub fn filter_config_name(listener: &str) -> String {
    format!("{FILTER_NAME}.{listener}")
}

/// Builds the snapshot for `config` with `weights` (per service; services missing from the map
/// use the configuration's weights).
pub fn snapshot(
    config: &Config,
    weights: &BTreeMap<String, Weights>,
    version: &str,
) -> shadowplane_xds::Result<Snapshot> {
    builder(config, weights, version).build()
}

/// The unchecked builder behind [`snapshot`], so callers (and tests) can add to it.
pub fn builder(
    config: &Config,
    weights: &BTreeMap<String, Weights>,
    version: &str,
) -> SnapshotBuilder {
    let mut b = Snapshot::builder(version);
    for service in &config.services {
        let w = weights.get(&service.name).unwrap_or(&service.weights);
        for group in &service.groups {
            b = b
                .cluster(eds_cluster(&group.name, group.connect_timeout_ms))
                .endpoints(load_assignment(&group.name, &group.endpoints));
        }
        b = b.route(route_config(
            &service.listener,
            service,
            w,
            config.filter.is_some(),
        ));
        if let Some(filter) = &config.filter {
            b = b.extension_config(filter_extension_config(
                &filter_config_name(&service.listener),
                filter,
                service,
                w,
            ));
        }
    }
    if let Some(filter) = &config.filter {
        b = b.cluster(telemetry_cluster(filter.telemetry_address));
    }
    for listener in &config.listeners {
        // Listeners without a service would only answer 404s; they still get a route config
        // so the listener can warm.
        let has_service = config.services.iter().any(|s| s.listener == listener.name);
        if !has_service {
            b = b.route(RouteConfiguration {
                name: listener.name.clone(),
                ..Default::default()
            });
        }
        b = b.listener(http_listener(
            &listener.name,
            listener.address,
            config.filter.is_some() && has_service,
        ));
    }
    b
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

fn millis(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn eds_cluster(name: &str, connect_timeout_ms: u64) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(millis(connect_timeout_ms)),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

fn load_assignment(cluster: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(*a)),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The control plane's telemetry endpoint, spoken to over HTTP/2 (hyper serves both).
fn telemetry_cluster(addr: SocketAddr) -> Cluster {
    let h2 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    Cluster {
        name: TELEMETRY_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(millis(1000)),
        load_assignment: Some(load_assignment(TELEMETRY_CLUSTER, &[addr])),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(h2),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn route_config(
    name: &str,
    service: &Service,
    weights: &Weights,
    filter: bool,
) -> RouteConfiguration {
    let header = shadowplane_wire::DEFAULT_ROUTE_HEADER;
    // The idle group sees a share of the requests as fire-and-forget copies (Envoy request
    // mirroring): the answer of the group that serves is the one the client gets. The idle
    // group is the cold shadow, or, once the shadow takes everything, the old primary on
    // standby, which stays warm this way.
    let idle = if weights.get(Role::Shadow) >= 100 {
        Role::Primary
    } else {
        Role::Shadow
    };
    let mirror: Vec<RequestMirrorPolicy> = service
        .groups
        .iter()
        .find(|g| g.role == idle)
        .filter(|_| service.mirror_percent > 0 && service.groups.len() > 1)
        .map(|target| RequestMirrorPolicy {
            cluster: target.name.clone(),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: service.mirror_percent.min(100),
                    denominator: 0, // HUNDRED
                }),
                runtime_key: String::new(),
            }),
            ..Default::default()
        })
        .into_iter()
        .collect();
    let mut routes = Vec::new();
    for prefix in &service.prefixes {
        if filter {
            // The filter's choice, read from the header it sets: one route per group, matched
            // exactly, so a client cannot send its request to any other cluster. Exact matches
            // cost Envoy less than one regex over all groups, on every request (Envoy resolves
            // the route again once the filter has set the header).
            for group in &service.groups {
                routes.push(Route {
                    name: format!("{}-filter-{}{}", service.name, group.name, prefix),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(prefix.clone())),
                        headers: vec![HeaderMatcher {
                            name: header.to_string(),
                            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                                StringMatcher {
                                    match_pattern: Some(MatchPattern::Exact(group.name.clone())),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::ClusterHeader(
                            header.to_string(),
                        )),
                        request_mirror_policies: mirror.clone(),
                        ..Default::default()
                    })),
                    ..Default::default()
                });
            }
        }
        // Envoy's own split with the same weights: used when the header is absent.
        routes.push(Route {
            name: format!("{}-weighted{}", service.name, prefix),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(prefix.clone())),
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: service
                        .groups
                        .iter()
                        .filter(|g| weights.get(g.role) > 0)
                        .map(|g| ClusterWeight {
                            name: g.name.clone(),
                            weight: Some(UInt32Value {
                                value: weights.get(g.role),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })),
                request_mirror_policies: mirror.clone(),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.name.clone(),
            domains: service.domains.clone(),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The filter's JSON configuration for one service (crates/wire's `FilterConfig`).
pub fn filter_json(filter: &FilterSettings, service: &Service, weights: &Weights) -> String {
    let cfg = FilterConfig {
        groups: service
            .groups
            .iter()
            .map(|g| GroupWeight {
                name: g.name.clone(),
                weight: weights.get(g.role),
            })
            .collect(),
        routing: filter.routing,
        session_key: filter.session_key.clone(),
        route_header: None,
        report_interval_ms: Some(filter.report_interval_ms),
        telemetry: Some(TelemetryTarget {
            cluster: TELEMETRY_CLUSTER.to_string(),
            path: None,
            authority: None,
            auth_token: filter.auth_token.clone(),
            timeout_ms: None,
        }),
        buffer_reports: None,
        max_clusters: None,
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string(&cfg).unwrap_or_default()
}

fn filter_extension_config(
    name: &str,
    filter: &FilterSettings,
    service: &Service,
    weights: &Weights,
) -> TypedExtensionConfig {
    let wasm = Wasm {
        config: Some(PluginConfig {
            name: FILTER_NAME.to_string(),
            root_id: FILTER_NAME.to_string(),
            // One VM per worker for every listener and every weight set: the VM config never
            // changes with weights, so Envoy reuses the VM and only reconfigures the plugin.
            vm: Some(Vm::VmConfig(VmConfig {
                vm_id: FILTER_NAME.to_string(),
                runtime: "envoy.wasm.runtime.v8".to_string(),
                code: Some(AsyncDataSource {
                    specifier: Some(AsyncSpecifier::Local(DataSource {
                        specifier: Some(DataSpecifier::Filename(
                            filter.wasm.to_string_lossy().into_owned(),
                        )),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            configuration: Some(pack_any(StringValue {
                value: filter_json(filter, service, weights),
            })),
            // Telemetry must never fail traffic: a broken VM skips the filter and the route's
            // weighted_clusters still split.
            failure_policy: FailurePolicy::FailOpen as i32,
            ..Default::default()
        }),
    };
    TypedExtensionConfig {
        name: name.to_string(),
        typed_config: Some(pack_any(wasm)),
    }
}

fn http_listener(name: &str, address: SocketAddr, filter: bool) -> Listener {
    let mut http_filters = Vec::new();
    if filter {
        http_filters.push(HttpFilter {
            name: filter_config_name(name),
            config_type: Some(HttpConfigType::ConfigDiscovery(ExtensionConfigSource {
                config_source: Some(ads()),
                type_urls: vec![WASM_TYPE_URL.to_string()],
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(HttpConfigType::TypedConfig(pack_any(Router::default()))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_string(),
        })),
        http_filters,
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(socket_address(address)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(NetworkConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A readable rendering of a snapshot's resources, nested `Any`s decoded, for snapshot tests
/// and `shadowplane snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    use prost::Message;
    use shadowplane_xds::ResourceType;
    use std::fmt::Write;
    let mut out = String::new();
    for t in ResourceType::ALL {
        for r in snapshot.resources(t) {
            let any: &Any = r.any();
            let _ = writeln!(out, "--- {} {}", t.short_name(), r.name());
            let body = match t {
                ResourceType::Cluster => {
                    Cluster::decode(any.value.as_slice()).map(|m| format!("{m:#?}"))
                }
                ResourceType::Endpoint => {
                    ClusterLoadAssignment::decode(any.value.as_slice()).map(|m| format!("{m:#?}"))
                }
                ResourceType::Route => {
                    RouteConfiguration::decode(any.value.as_slice()).map(|m| format!("{m:#?}"))
                }
                ResourceType::Listener => Listener::decode(any.value.as_slice()).map(|m| {
                    let mut s = format!("{m:#?}");
                    for fc in &m.filter_chains {
                        for f in &fc.filters {
                            if let Some(NetworkConfigType::TypedConfig(a)) = &f.config_type
                                && let Ok(h) = HttpConnectionManager::decode(a.value.as_slice())
                            {
                                let _ = write!(s, "\n{}: {h:#?}", f.name);
                            }
                        }
                    }
                    s
                }),
                ResourceType::ExtensionConfig => TypedExtensionConfig::decode(any.value.as_slice())
                    .map(|m| {
                        let wasm = m
                            .typed_config
                            .as_ref()
                            .and_then(|a| Wasm::decode(a.value.as_slice()).ok());
                        let json = wasm
                            .as_ref()
                            .and_then(|w| w.config.as_ref())
                            .and_then(|c| c.configuration.as_ref())
                            .and_then(|a| StringValue::decode(a.value.as_slice()).ok())
                            .map(|s| s.value)
                            .unwrap_or_default();
                        format!("{wasm:#?}\nconfiguration: {json}")
                    }),
            };
            let body = body.unwrap_or_else(|e| format!("undecodable: {e}"));
            let _ = writeln!(out, "{}", without_defaults(&body));
        }
    }
    out
}

/// Drops the lines of a `{:#?}` rendering that hold a field's default value (prost messages
/// print every field), so what is left is what the resource sets.
fn without_defaults(debug: &str) -> String {
    const DEFAULTS: [&str; 8] = [
        ": None,",
        ": [],",
        ": {},",
        ": false,",
        ": 0,",
        ": \"\",",
        ": 0.0,",
        ": Unspecified,",
    ];
    let mut out: Vec<String> = Vec::new();
    let mut bytes: Option<(String, usize)> = None;
    for l in debug.lines() {
        // Encoded `Any` payloads print one byte per line: show their size instead.
        if let Some((head, n)) = bytes.as_mut() {
            if l.trim() == "]," {
                out.push(format!("{head} <{n} bytes>,"));
                bytes = None;
            } else {
                *n += 1;
            }
            continue;
        }
        if l.trim_end().ends_with("value: [") {
            bytes = Some((l.trim_end().trim_end_matches(" [").to_string(), 0));
            continue;
        }
        if !DEFAULTS.iter().any(|d| l.trim_end().ends_with(d)) {
            out.push(l.to_string());
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Group, Listener as ListenerCfg, Role};
    use std::collections::BTreeSet;

    fn config(filter: bool) -> Config {
        let roles = BTreeSet::from([Role::Primary, Role::Shadow]);
        Config {
            node_cluster: "shadowplane".into(),
            xds_address: "127.0.0.1:18000".parse().unwrap(),
            admin_address: "127.0.0.1:18001".parse().unwrap(),
            filter: filter.then(|| FilterSettings {
                wasm: "/opt/shadowplane/shadowplane_filter.wasm".into(),
                routing: shadowplane_wire::RoutingMode::Sticky,
                session_key: Some(shadowplane_wire::SessionKey::Header("x-session-id".into())),
                report_interval_ms: 1000,
                auth_token: Some("secret".into()),
                telemetry_address: "127.0.0.1:18001".parse().unwrap(),
            }),
            store_path: "/var/lib/shadowplane/shadowplane.redb".into(),
            retention_ms: 3_600_000,
            listeners: vec![ListenerCfg {
                name: "ingress".into(),
                address: "127.0.0.1:10000".parse().unwrap(),
            }],
            services: vec![Service {
                name: "checkout".into(),
                listener: "ingress".into(),
                domains: vec!["*".into()],
                prefixes: vec!["/".into()],
                groups: vec![
                    Group {
                        name: "checkout-blue".into(),
                        role: Role::Primary,
                        endpoints: vec!["127.0.0.1:8081".parse().unwrap()],
                        connect_timeout_ms: 1000,
                    },
                    Group {
                        name: "checkout-green".into(),
                        role: Role::Shadow,
                        endpoints: vec!["127.0.0.1:8082".parse().unwrap()],
                        connect_timeout_ms: 250,
                    },
                ],
                weights: Weights::check(
                    &BTreeMap::from([(Role::Primary, 90), (Role::Shadow, 10)]),
                    &roles,
                )
                .unwrap(),
                mirror_percent: 0,
                managed: None,
            }],
        }
    }

    #[test]
    fn snapshot_with_the_filter() {
        let snap = snapshot(&config(true), &BTreeMap::new(), "7").unwrap();
        expect_test::expect_file!["snapshots/with_filter.txt"].assert_eq(&render(&snap));
    }

    #[test]
    fn snapshot_without_the_filter_has_no_ecds_and_no_header_route() {
        let snap = snapshot(&config(false), &BTreeMap::new(), "1").unwrap();
        let text = render(&snap);
        assert!(!text.contains("extension_configs"), "{text}");
        assert!(!text.contains("ClusterHeader"), "{text}");
        assert!(!text.contains(TELEMETRY_CLUSTER), "{text}");
        expect_test::expect_file!["snapshots/without_filter.txt"].assert_eq(&text);
    }

    #[test]
    fn weights_reach_route_and_filter_alike() {
        let cfg = config(true);
        let roles = BTreeSet::from([Role::Primary, Role::Shadow]);
        let w = Weights::check(
            &BTreeMap::from([(Role::Primary, 30), (Role::Shadow, 70)]),
            &roles,
        )
        .unwrap();
        let json = filter_json(cfg.filter.as_ref().unwrap(), &cfg.services[0], &w);
        let parsed = FilterConfig::from_json(json.as_bytes())
            .unwrap()
            .check()
            .unwrap();
        let weights: Vec<(String, u32)> = parsed
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.weight))
            .collect();
        assert_eq!(
            weights,
            vec![
                ("checkout-blue".to_string(), 30),
                ("checkout-green".to_string(), 70)
            ]
        );
        let rc = route_config("ingress", &cfg.services[0], &w, true);
        // One header route per group, then Envoy's own split.
        let Some(Action::Route(ra)) = rc.virtual_hosts[0]
            .routes
            .last()
            .and_then(|r| r.action.as_ref())
        else {
            panic!("no route action")
        };
        let Some(ClusterSpecifier::WeightedClusters(wc)) = &ra.cluster_specifier else {
            panic!("not weighted")
        };
        let route: Vec<(String, u32)> = wc
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .collect();
        assert_eq!(route, weights);
    }

    #[test]
    fn the_mirror_goes_to_the_cold_shadow_then_to_the_primary_on_standby() {
        let mut service = config(true).services[0].clone();
        service.mirror_percent = 2;
        let mirrored = |service: &Service, shadow: u32| {
            let w = Weights::split(shadow, true);
            let rc = route_config("ingress", service, &w, true);
            rc.virtual_hosts[0]
                .routes
                .iter()
                .map(|r| match &r.action {
                    Some(Action::Route(ra)) => ra
                        .request_mirror_policies
                        .iter()
                        .map(|m| {
                            let pct = m
                                .runtime_fraction
                                .as_ref()
                                .and_then(|f| f.default_value.as_ref())
                                .map_or(0, |f| f.numerator);
                            (m.cluster.clone(), pct)
                        })
                        .collect::<Vec<_>>(),
                    _ => vec![],
                })
                .collect::<Vec<_>>()
        };
        let shadow = vec![("checkout-green".to_string(), 2)];
        let primary = vec![("checkout-blue".to_string(), 2)];
        // Every route mirrors alike: one per group for the filter's header, then the split.
        assert_eq!(mirrored(&service, 0), vec![shadow; 3]);
        assert_eq!(mirrored(&service, 100), vec![primary; 3]);
        service.mirror_percent = 0;
        assert_eq!(mirrored(&service, 0), vec![Vec::<(String, u32)>::new(); 3]);
    }
}
