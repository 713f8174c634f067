//! Immutable, consistency-checked sets of Envoy resources ([`Snapshot`]) and their builder.

mod check;

use std::sync::Arc;

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, core::v3::TypedExtensionConfig, endpoint::v3::ClusterLoadAssignment,
    listener::v3::Listener, route::v3::RouteConfiguration,
};

use crate::error::Result;
use crate::resource::{Resource, ResourceType};

/// A consistent set of resources of every type, under a version the caller chose.
///
/// Immutable and cheap to clone (one `Arc`). Only [`SnapshotBuilder::build`] makes one, after
/// a consistency check, so nothing inconsistent can reach an Envoy.
#[derive(Clone)]
pub struct Snapshot {
    inner: Arc<Inner>,
}

struct Inner {
    version: String,
    /// Indexed by [`ResourceType::index`]; each sorted by name, names unique.
    types: [Arc<[Resource]>; 5],
}

impl Snapshot {
    /// Starts a snapshot with the given version. The version is opaque: the cache never
    /// compares versions, it only hands them to Envoy and reports them.
    pub fn builder(version: impl Into<String>) -> SnapshotBuilder {
        SnapshotBuilder {
            version: version.into(),
            clusters: Vec::new(),
            endpoints: Vec::new(),
            listeners: Vec::new(),
            routes: Vec::new(),
            extension_configs: Vec::new(),
        }
    }

    /// The version the caller chose.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The resources of one type, sorted by name.
    pub fn resources(&self, t: ResourceType) -> impl Iterator<Item = &Resource> {
        self.inner.types[t.index()].iter()
    }

    /// The resource of type `t` named `name`.
    pub fn get(&self, t: ResourceType, name: &str) -> Option<&Resource> {
        let list = &self.inner.types[t.index()];
        list.binary_search_by(|r| r.name().cmp(name))
            .ok()
            .map(|i| &list[i])
    }

    /// The shared, sorted list of one type (streams keep this `Arc` instead of copying).
    pub(crate) fn list(&self, t: ResourceType) -> &Arc<[Resource]> {
        &self.inner.types[t.index()]
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Snapshot");
        d.field("version", &self.version());
        for t in ResourceType::ALL {
            d.field(t.short_name(), &self.list(t).len());
        }
        d.finish()
    }
}

/// Collects resources for a [`Snapshot`]; [`SnapshotBuilder::build`] checks and encodes them.
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    version: String,
    clusters: Vec<Cluster>,
    endpoints: Vec<ClusterLoadAssignment>,
    listeners: Vec<Listener>,
    routes: Vec<RouteConfiguration>,
    extension_configs: Vec<TypedExtensionConfig>,
}

impl SnapshotBuilder {
    /// Adds a cluster (CDS).
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// Adds the endpoints of an EDS cluster (named by `cluster_name`).
    pub fn endpoints(mut self, endpoints: ClusterLoadAssignment) -> Self {
        self.endpoints.push(endpoints);
        self
    }

    /// Adds a listener (LDS).
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Adds a route configuration (RDS).
    pub fn route(mut self, route: RouteConfiguration) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds an extension config (ECDS).
    pub fn extension_config(mut self, config: TypedExtensionConfig) -> Self {
        self.extension_configs.push(config);
        self
    }

    /// Checks the resources for consistency and encodes them.
    ///
    /// Refuses, naming the resources involved: an empty name; two resources of one type with
    /// the same name; a route (`cluster` or `weighted_clusters`) naming a cluster not in the
    /// snapshot; an EDS cluster without its `ClusterLoadAssignment`; a listener whose HTTP
    /// connection manager asks RDS for a route configuration, or whose filters ask ECDS for an
    /// extension config, that is not in the snapshot. `cluster_header` and cluster specifier
    /// plugins are not checked (the cluster is chosen per request).
    pub fn build(self) -> Result<Snapshot> {
        let mut clusters = self.clusters;
        let mut endpoints = self.endpoints;
        let mut listeners = self.listeners;
        let mut routes = self.routes;
        let mut extension_configs = self.extension_configs;
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        extension_configs.sort_by(|a, b| a.name.cmp(&b.name));

        check::names(ResourceType::Cluster, clusters.iter().map(|c| &c.name))?;
        check::names(
            ResourceType::Endpoint,
            endpoints.iter().map(|e| &e.cluster_name),
        )?;
        check::names(
            ResourceType::ExtensionConfig,
            extension_configs.iter().map(|e| &e.name),
        )?;
        check::names(ResourceType::Listener, listeners.iter().map(|l| &l.name))?;
        check::names(ResourceType::Route, routes.iter().map(|r| &r.name))?;
        check::references(&check::Sets {
            clusters: &clusters,
            endpoints: &endpoints,
            listeners: &listeners,
            routes: &routes,
            extension_configs: &extension_configs,
        })?;

        let types = [
            encode_all(&clusters, |c| &c.name),
            encode_all(&endpoints, |e| &e.cluster_name),
            encode_all(&extension_configs, |e| &e.name),
            encode_all(&listeners, |l| &l.name),
            encode_all(&routes, |r| &r.name),
        ];
        Ok(Snapshot {
            inner: Arc::new(Inner {
                version: self.version,
                types,
            }),
        })
    }
}

fn encode_all<M: prost::Message + prost::Name>(
    items: &[M],
    name: impl Fn(&M) -> &String,
) -> Arc<[Resource]> {
    items.iter().map(|m| Resource::encode(name(m), m)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_sorted_and_found_by_name() {
        let s = Snapshot::builder("v1")
            .cluster(Cluster {
                name: "b".into(),
                ..Default::default()
            })
            .cluster(Cluster {
                name: "a".into(),
                ..Default::default()
            })
            .build()
            .expect("consistent");
        assert_eq!(s.version(), "v1");
        let names: Vec<_> = s
            .resources(ResourceType::Cluster)
            .map(|r| r.name())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            s.get(ResourceType::Cluster, "b").map(|r| r.name()),
            Some("b")
        );
        assert!(s.get(ResourceType::Cluster, "c").is_none());
        assert!(s.get(ResourceType::Listener, "a").is_none());
        assert_eq!(s.resources(ResourceType::Route).count(), 0);
        let c = s.clone();
        assert!(Arc::ptr_eq(&c.inner, &s.inner));
    }
}
