//! Envoy resource types served by this crate and the encoded, shareable [`Resource`].

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// The xDS resource types this crate serves.
///
/// The declaration order is the make-before-break order of [`ResourceType::ALL`], so the
/// derived `Ord` sorts types in the order a change is rolled out.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoint,
    /// `envoy.config.core.v3.TypedExtensionConfig` (ECDS).
    ExtensionConfig,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
}

impl ResourceType {
    /// Every type, in make-before-break order.
    ///
    /// Clusters and their endpoints come first: everything else points at clusters, and a
    /// cluster is only usable once its endpoints arrived. Extension configs come before
    /// listeners because a listener's filters may name them (ECDS) and a listener warms until
    /// they exist. Listeners come before routes because route configurations are a named
    /// subscription that Envoy only opens once a listener asks for them (RDS).
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::ExtensionConfig,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The protobuf type url Envoy uses for this type.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::ExtensionConfig => {
                "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type for a type url, if this crate serves it.
    pub fn from_type_url(url: &str) -> Option<Self> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// A short plural name for logs and status pages.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "clusters",
            ResourceType::Endpoint => "endpoints",
            ResourceType::ExtensionConfig => "extension_configs",
            ResourceType::Listener => "listeners",
            ResourceType::Route => "routes",
        }
    }

    /// Position in [`ResourceType::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether an empty SotW subscription means "everything" (CDS and LDS) rather than "nothing".
    pub(crate) fn empty_means_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

/// One encoded resource: its name, its `Any`, and its version.
///
/// The version is the xxh3-64 hash of the encoded bytes in hex, so it changes exactly when
/// the content does; delta xDS sends it as the per-resource version. Cloning is cheap (one
/// `Arc`), and every stream that sends the resource shares the same encoded bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Resource {
    inner: Arc<Inner>,
}

#[derive(PartialEq, Eq)]
struct Inner {
    name: Arc<str>,
    version: Arc<str>,
    any: Any,
}

impl Resource {
    /// Encodes `message` under `name`.
    pub(crate) fn encode<M: Message + Name>(name: &str, message: &M) -> Resource {
        let value = message.encode_to_vec();
        let version = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&value));
        Resource {
            inner: Arc::new(Inner {
                name: Arc::from(name),
                version: Arc::from(version),
                any: Any {
                    type_url: M::type_url(),
                    value,
                },
            }),
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The resource's version: xxh3-64 of the encoded bytes, 16 hex digits.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The encoded resource.
    pub fn any(&self) -> &Any {
        &self.inner.any
    }

    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.inner.name
    }

    pub(crate) fn version_arc(&self) -> &Arc<str> {
        &self.inner.version
    }
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name())
            .field("version", &self.version())
            .field("type_url", &self.any().type_url)
            .field("bytes", &self.any().value.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn type_urls_round_trip_and_match_prost() {
        use envoy_types::pb::envoy::config::{
            core::v3::TypedExtensionConfig, endpoint::v3::ClusterLoadAssignment,
            listener::v3::Listener, route::v3::RouteConfiguration,
        };
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(ResourceType::Cluster.type_url(), Cluster::type_url());
        assert_eq!(
            ResourceType::Endpoint.type_url(),
            ClusterLoadAssignment::type_url()
        );
        assert_eq!(ResourceType::Listener.type_url(), Listener::type_url());
        assert_eq!(
            ResourceType::Route.type_url(),
            RouteConfiguration::type_url()
        );
        assert_eq!(
            ResourceType::ExtensionConfig.type_url(),
            TypedExtensionConfig::type_url()
        );
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/x"), None);
        let mut sorted = ResourceType::ALL;
        sorted.sort();
        assert_eq!(sorted, ResourceType::ALL);
        for (i, t) in ResourceType::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }

    #[test]
    fn version_is_xxh3_of_the_encoded_bytes() {
        let c = Cluster {
            name: "a".into(),
            ..Default::default()
        };
        let r = Resource::encode("a", &c);
        assert_eq!(r.name(), "a");
        assert_eq!(r.any().value, c.encode_to_vec());
        assert_eq!(
            r.version(),
            format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&c.encode_to_vec()))
        );
        let other = Resource::encode(
            "a",
            &Cluster {
                name: "a".into(),
                alt_stat_name: "x".into(),
                ..Default::default()
            },
        );
        assert_ne!(r.version(), other.version());
    }
}
