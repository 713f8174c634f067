//! Snapshots for the tests: EDS clusters, one listener using RDS and an ECDS filter, one route.

use envoy_types::pb::envoy::config::{
    cluster::v3::{
        Cluster,
        cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
    },
    core::v3::{
        Address, AggregatedConfigSource, ConfigSource, ExtensionConfigSource, SocketAddress,
        TypedExtensionConfig, address, config_source, socket_address,
    },
    endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint},
    listener::v3::{Filter, FilterChain, Listener, filter},
    route::v3::{
        Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route,
        route_action, route_match, weighted_cluster,
    },
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, StringValue, UInt32Value};
use prost::{Message, Name};
use shadowplane_xds::{Snapshot, SnapshotBuilder};

pub const LISTENER: &str = "ingress";
pub const ROUTE: &str = "main";
pub const WEIGHTS: &str = "weights";

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: 2,
        ..Default::default()
    }
}

pub fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

pub fn endpoints(name: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route(weights: &[(&str, u32)]) -> RouteConfiguration {
    RouteConfiguration {
        name: ROUTE.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                        WeightedCluster {
                            clusters: weights
                                .iter()
                                .map(|(name, w)| weighted_cluster::ClusterWeight {
                                    name: (*name).into(),
                                    weight: Some(UInt32Value { value: *w }),
                                    ..Default::default()
                                })
                                .collect(),
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
    }
}

pub fn listener() -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "ingress".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: ROUTE.into(),
        })),
        http_filters: vec![HttpFilter {
            name: WEIGHTS.into(),
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                ExtensionConfigSource {
                    config_source: Some(ads()),
                    type_urls: vec![StringValue::type_url()],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: LISTENER.into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url: HttpConnectionManager::type_url(),
                    value: hcm.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The filter's config: the weights as text, so a weight change changes ECDS too.
pub fn weights_config(weights: &[(&str, u32)]) -> TypedExtensionConfig {
    let text = weights
        .iter()
        .map(|(n, w)| format!("{n}={w}"))
        .collect::<Vec<_>>()
        .join(",");
    TypedExtensionConfig {
        name: WEIGHTS.into(),
        typed_config: Some(Any {
            type_url: StringValue::type_url(),
            value: StringValue { value: text }.encode_to_vec(),
        }),
    }
}

/// A builder with `clusters` (EDS, each with endpoints) and the listener, route and filter
/// config splitting traffic by `weights`.
pub fn builder(version: &str, clusters: &[&str], weights: &[(&str, u32)]) -> SnapshotBuilder {
    let mut b = Snapshot::builder(version)
        .listener(listener())
        .route(route(weights))
        .extension_config(weights_config(weights));
    for (i, c) in clusters.iter().enumerate() {
        b = b
            .cluster(cluster(c))
            .endpoints(endpoints(c, 9000 + i as u32));
    }
    b
}

pub fn snapshot(version: &str, clusters: &[&str], weights: &[(&str, u32)]) -> Snapshot {
    builder(version, clusters, weights)
        .build()
        .expect("fixture snapshots are consistent")
}
