//! The snapshot consistency check: names are present and unique, and every reference resolves.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::{
    cluster::v3::{
        Cluster,
        cluster::{ClusterDiscoveryType, DiscoveryType},
    },
    core::v3::TypedExtensionConfig,
    endpoint::v3::ClusterLoadAssignment,
    listener::v3::{Filter, Listener, filter, listener_filter},
    route::v3::{RouteConfiguration, route::Action, route_action::ClusterSpecifier},
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use prost::{Message, Name};

use crate::error::{Error, Result};
use crate::resource::ResourceType;

/// The resources of a snapshot under construction, each sorted by name.
pub(super) struct Sets<'a> {
    pub clusters: &'a [Cluster],
    pub endpoints: &'a [ClusterLoadAssignment],
    pub listeners: &'a [Listener],
    pub routes: &'a [RouteConfiguration],
    pub extension_configs: &'a [TypedExtensionConfig],
}

/// Refuses empty and duplicate names; `names` must be sorted.
pub(super) fn names<'a>(
    resource_type: ResourceType,
    names: impl Iterator<Item = &'a String>,
) -> Result<()> {
    let mut previous: Option<&String> = None;
    for name in names {
        if name.is_empty() {
            return Err(Error::EmptyName { resource_type });
        }
        if previous == Some(name) {
            return Err(Error::DuplicateName {
                resource_type,
                name: name.clone(),
            });
        }
        previous = Some(name);
    }
    Ok(())
}

/// Refuses references to resources that are not in the snapshot.
pub(super) fn references(sets: &Sets<'_>) -> Result<()> {
    let clusters: BTreeSet<&str> = sets.clusters.iter().map(|c| c.name.as_str()).collect();
    let endpoints: BTreeSet<&str> = sets
        .endpoints
        .iter()
        .map(|e| e.cluster_name.as_str())
        .collect();
    let routes: BTreeSet<&str> = sets.routes.iter().map(|r| r.name.as_str()).collect();
    let extensions: BTreeSet<&str> = sets
        .extension_configs
        .iter()
        .map(|e| e.name.as_str())
        .collect();

    for cluster in sets.clusters {
        let eds = matches!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
        );
        if !eds {
            continue;
        }
        let service_name = cluster
            .eds_cluster_config
            .as_ref()
            .map(|c| c.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&cluster.name);
        if !endpoints.contains(service_name) {
            return Err(Error::MissingEndpoints {
                cluster: cluster.name.clone(),
                service_name: service_name.to_owned(),
            });
        }
    }

    for route in sets.routes {
        route_clusters(route, &route.name, &clusters)?;
    }

    for listener in sets.listeners {
        for lf in &listener.listener_filters {
            if let Some(listener_filter::ConfigType::ConfigDiscovery(_)) = lf.config_type {
                need_extension(listener, &lf.name, &extensions)?;
            }
        }
        let chains = listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.as_ref());
        for chain in chains {
            for f in &chain.filters {
                network_filter(listener, f, &clusters, &routes, &extensions)?;
            }
        }
    }
    Ok(())
}

fn need_extension(listener: &Listener, name: &str, extensions: &BTreeSet<&str>) -> Result<()> {
    if extensions.contains(name) {
        Ok(())
    } else {
        Err(Error::MissingExtensionConfig {
            listener: listener.name.clone(),
            extension_config: name.to_owned(),
        })
    }
}

fn network_filter(
    listener: &Listener,
    f: &Filter,
    clusters: &BTreeSet<&str>,
    routes: &BTreeSet<&str>,
    extensions: &BTreeSet<&str>,
) -> Result<()> {
    let any = match &f.config_type {
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return need_extension(listener, &f.name, extensions);
        }
        Some(filter::ConfigType::TypedConfig(any)) => any,
        None => return Ok(()),
    };
    // Only a typed HttpConnectionManager is checked; one wrapped in a TypedStruct is opaque here.
    if any.type_url != HttpConnectionManager::type_url() {
        return Ok(());
    }
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|source| {
        Error::InvalidHttpConnectionManager {
            listener: listener.name.clone(),
            source,
        }
    })?;
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) if !routes.contains(rds.route_config_name.as_str()) => {
            return Err(Error::MissingRoute {
                listener: listener.name.clone(),
                route_config: rds.route_config_name.clone(),
            });
        }
        Some(RouteSpecifier::RouteConfig(inline)) => {
            let label = format!("{}/inline:{}", listener.name, inline.name);
            route_clusters(inline, &label, clusters)?;
        }
        _ => {}
    }
    for hf in &hcm.http_filters {
        if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = hf.config_type {
            need_extension(listener, &hf.name, extensions)?;
        }
    }
    Ok(())
}

fn route_clusters(
    route: &RouteConfiguration,
    label: &str,
    clusters: &BTreeSet<&str>,
) -> Result<()> {
    let missing = |cluster: &str| Error::MissingCluster {
        route_config: label.to_owned(),
        cluster: cluster.to_owned(),
    };
    for vh in &route.virtual_hosts {
        for r in &vh.routes {
            let Some(Action::Route(action)) = &r.action else {
                continue;
            };
            match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) if !clusters.contains(c.as_str()) => {
                    return Err(missing(c));
                }
                Some(ClusterSpecifier::WeightedClusters(w)) => {
                    // An entry with an empty name picks its cluster from `cluster_header`.
                    if let Some(cw) = w
                        .clusters
                        .iter()
                        .find(|cw| !cw.name.is_empty() && !clusters.contains(cw.name.as_str()))
                    {
                        return Err(missing(&cw.name));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::{
        cluster::v3::cluster::EdsClusterConfig,
        core::v3::ExtensionConfigSource,
        listener::v3::{FilterChain, ListenerFilter},
        route::v3::{Route, RouteAction, VirtualHost, WeightedCluster, weighted_cluster},
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpFilter, Rds,
    };
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::snapshot::{Snapshot, SnapshotBuilder};

    fn cluster(name: &str, eds: bool) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(if eds {
                DiscoveryType::Eds as i32
            } else {
                DiscoveryType::Static as i32
            })),
            ..Default::default()
        }
    }

    fn cla(name: &str) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        }
    }

    fn route(name: &str, spec: ClusterSpecifier) -> RouteConfiguration {
        RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(spec),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn weighted(names: &[&str]) -> ClusterSpecifier {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: names
                .iter()
                .map(|n| weighted_cluster::ClusterWeight {
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn hcm_listener(name: &str, hcm: HttpConnectionManager) -> Listener {
        Listener {
            name: name.into(),
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

    fn rds(route: &str) -> HttpConnectionManager {
        HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: route.into(),
                config_source: None,
            })),
            ..Default::default()
        }
    }

    fn discovered_http_filter(name: &str) -> HttpFilter {
        HttpFilter {
            name: name.into(),
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                ExtensionConfigSource::default(),
            )),
            ..Default::default()
        }
    }

    fn ext(name: &str) -> TypedExtensionConfig {
        TypedExtensionConfig {
            name: name.into(),
            typed_config: None,
        }
    }

    fn err(b: SnapshotBuilder) -> String {
        match b.build() {
            Ok(_) => "built".to_owned(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn a_consistent_snapshot_builds() {
        let mut hcm = rds("r");
        hcm.http_filters.push(discovered_http_filter("weights"));
        let s = Snapshot::builder("v")
            .cluster(cluster("a", true))
            .cluster(Cluster {
                name: "b".into(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
                eds_cluster_config: Some(EdsClusterConfig {
                    service_name: "b-svc".into(),
                    eds_config: None,
                }),
                ..Default::default()
            })
            .cluster(cluster("static", false))
            .endpoints(cla("a"))
            .endpoints(cla("b-svc"))
            .route(route("r", weighted(&["a", "b", ""])))
            .route(route(
                "r2",
                ClusterSpecifier::ClusterHeader("x-cluster".into()),
            ))
            .route(route("r3", ClusterSpecifier::Cluster("static".into())))
            .listener(hcm_listener("l", hcm))
            .extension_config(ext("weights"))
            .build();
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn empty_names_are_refused() {
        expect_test::expect![[r#"EmptyName { resource_type: Cluster }"#]]
            .assert_eq(&err(Snapshot::builder("v").cluster(cluster("", false))));
        expect_test::expect![[r#"EmptyName { resource_type: Endpoint }"#]]
            .assert_eq(&err(Snapshot::builder("v").endpoints(cla(""))));
        expect_test::expect![[r#"EmptyName { resource_type: Listener }"#]]
            .assert_eq(&err(Snapshot::builder("v").listener(Listener::default())));
        expect_test::expect![[r#"EmptyName { resource_type: Route }"#]].assert_eq(&err(
            Snapshot::builder("v").route(RouteConfiguration::default()),
        ));
        expect_test::expect![[r#"EmptyName { resource_type: ExtensionConfig }"#]]
            .assert_eq(&err(Snapshot::builder("v").extension_config(ext(""))));
    }

    #[test]
    fn duplicate_names_are_refused() {
        expect_test::expect![[r#"DuplicateName { resource_type: Cluster, name: "a" }"#]].assert_eq(
            &err(Snapshot::builder("v")
                .cluster(cluster("a", false))
                .cluster(cluster("b", false))
                .cluster(cluster("a", false))),
        );
        expect_test::expect![[r#"DuplicateName { resource_type: Route, name: "r" }"#]].assert_eq(
            &err(Snapshot::builder("v")
                .cluster(cluster("a", false))
                .route(route("r", ClusterSpecifier::Cluster("a".into())))
                .route(route("r", ClusterSpecifier::Cluster("a".into())))),
        );
        expect_test::expect![[r#"DuplicateName { resource_type: Endpoint, name: "e" }"#]]
            .assert_eq(&err(Snapshot::builder("v")
                .endpoints(cla("e"))
                .endpoints(cla("e"))));
    }

    #[test]
    fn a_route_to_a_missing_cluster_is_refused() {
        expect_test::expect![[r#"MissingCluster { route_config: "r", cluster: "gone" }"#]]
            .assert_eq(&err(
                Snapshot::builder("v").route(route("r", ClusterSpecifier::Cluster("gone".into())))
            ));
        expect_test::expect![[r#"MissingCluster { route_config: "r", cluster: "b" }"#]].assert_eq(
            &err(Snapshot::builder("v")
                .cluster(cluster("a", false))
                .route(route("r", weighted(&["a", "b"])))),
        );
        // A route inlined in the listener is checked too.
        let inline = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::RouteConfig(route(
                "local",
                ClusterSpecifier::Cluster("nope".into()),
            ))),
            ..Default::default()
        };
        expect_test::expect![[
            r#"MissingCluster { route_config: "l/inline:local", cluster: "nope" }"#
        ]]
        .assert_eq(&err(
            Snapshot::builder("v").listener(hcm_listener("l", inline))
        ));
    }

    #[test]
    fn an_eds_cluster_without_endpoints_is_refused() {
        expect_test::expect![[r#"MissingEndpoints { cluster: "a", service_name: "a" }"#]]
            .assert_eq(&err(Snapshot::builder("v").cluster(cluster("a", true))));
        let mut c = cluster("a", true);
        c.eds_cluster_config = Some(EdsClusterConfig {
            service_name: "svc".into(),
            eds_config: None,
        });
        expect_test::expect![[r#"MissingEndpoints { cluster: "a", service_name: "svc" }"#]]
            .assert_eq(&err(Snapshot::builder("v").cluster(c).endpoints(cla("a"))));
    }

    #[test]
    fn a_listener_with_a_missing_route_is_refused() {
        expect_test::expect![[r#"MissingRoute { listener: "l", route_config: "r" }"#]].assert_eq(
            &err(Snapshot::builder("v").listener(hcm_listener("l", rds("r")))),
        );
    }

    #[test]
    fn a_listener_with_a_missing_extension_config_is_refused() {
        let mut hcm = HttpConnectionManager::default();
        hcm.http_filters.push(discovered_http_filter("weights"));
        expect_test::expect![[
            r#"MissingExtensionConfig { listener: "l", extension_config: "weights" }"#
        ]]
        .assert_eq(&err(Snapshot::builder("v").listener(hcm_listener("l", hcm))));

        let network = Listener {
            name: "n".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "net-ext".into(),
                    config_type: Some(filter::ConfigType::ConfigDiscovery(
                        ExtensionConfigSource::default(),
                    )),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        expect_test::expect![[
            r#"MissingExtensionConfig { listener: "n", extension_config: "net-ext" }"#
        ]]
        .assert_eq(&err(Snapshot::builder("v").listener(network)));

        let lf = Listener {
            name: "f".into(),
            listener_filters: vec![ListenerFilter {
                name: "lf-ext".into(),
                config_type: Some(listener_filter::ConfigType::ConfigDiscovery(
                    ExtensionConfigSource::default(),
                )),
                filter_disabled: None,
            }],
            ..Default::default()
        };
        expect_test::expect![[
            r#"MissingExtensionConfig { listener: "f", extension_config: "lf-ext" }"#
        ]]
        .assert_eq(&err(Snapshot::builder("v").listener(lf)));
    }

    #[test]
    fn an_undecodable_http_connection_manager_is_refused() {
        let l = Listener {
            name: "l".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: HttpConnectionManager::type_url(),
                        value: vec![0xff, 0xff, 0xff],
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = Snapshot::builder("v").listener(l).build().err();
        assert!(
            matches!(e, Some(Error::InvalidHttpConnectionManager { ref listener, .. }) if listener == "l"),
            "{e:?}"
        );
    }

    #[test]
    fn messages_are_lower_case_without_a_trailing_period() {
        let e = Snapshot::builder("v")
            .route(route("r", ClusterSpecifier::Cluster("gone".into())))
            .build()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        expect_test::expect![[
            r#"route configuration `r` names cluster `gone`, which is not in the snapshot"#
        ]]
        .assert_eq(&e);
    }
}
