//! The crate's one error type: snapshot consistency, cache operations, sync waits and the xDS protocol.

use crate::resource::ResourceType;

/// Everything that can go wrong in this crate.
///
/// Snapshot-consistency variants carry the names involved so an operator can find the
/// offending resource. At the gRPC edge an error becomes a `tonic::Status` in exactly one
/// place (`server.rs`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A resource has an empty name.
    #[error("a resource in {} has an empty name", resource_type.short_name())]
    EmptyName {
        /// Type of the unnamed resource.
        resource_type: ResourceType,
    },
    /// Two resources of the same type share a name.
    #[error("two resources in {} are named `{name}`", resource_type.short_name())]
    DuplicateName {
        /// Type of the resources.
        resource_type: ResourceType,
        /// The shared name.
        name: String,
    },
    /// A route configuration routes to a cluster that is not in the snapshot.
    #[error(
        "route configuration `{route_config}` names cluster `{cluster}`, which is not in the snapshot"
    )]
    MissingCluster {
        /// The route configuration (for a route configuration inlined in a listener:
        /// `<listener>/inline:<name>`).
        route_config: String,
        /// The cluster it names.
        cluster: String,
    },
    /// An EDS cluster has no `ClusterLoadAssignment` in the snapshot.
    #[error("eds cluster `{cluster}` has no endpoints `{service_name}` in the snapshot")]
    MissingEndpoints {
        /// The cluster.
        cluster: String,
        /// Its EDS service name (the cluster name unless `eds_cluster_config.service_name` is set).
        service_name: String,
    },
    /// A listener's HTTP connection manager uses RDS for a route configuration that is not in the snapshot.
    #[error(
        "listener `{listener}` uses route configuration `{route_config}`, which is not in the snapshot"
    )]
    MissingRoute {
        /// The listener.
        listener: String,
        /// The route configuration it asks RDS for.
        route_config: String,
    },
    /// A listener uses ECDS for an extension config that is not in the snapshot.
    #[error(
        "listener `{listener}` uses extension config `{extension_config}`, which is not in the snapshot"
    )]
    MissingExtensionConfig {
        /// The listener.
        listener: String,
        /// The extension config it asks ECDS for.
        extension_config: String,
    },
    /// A listener's HTTP connection manager config does not decode.
    #[error("listener `{listener}` has an http connection manager that does not decode: {source}")]
    InvalidHttpConnectionManager {
        /// The listener.
        listener: String,
        /// What prost said.
        source: prost::DecodeError,
    },
    /// `set_snapshot_canary` with an empty canary set.
    #[error("canary for group `{group}` names no node")]
    EmptyCanary {
        /// The group.
        group: String,
    },
    /// `set_snapshot_canary` names a node that is not connected in that group.
    #[error("canary node `{node}` is not connected in group `{group}`")]
    CanaryNodeNotConnected {
        /// The group.
        group: String,
        /// The node id.
        node: String,
    },
    /// The group has no snapshot (a canary needs a stable snapshot to keep the others on).
    #[error("group `{group}` has no snapshot")]
    NoSnapshot {
        /// The group.
        group: String,
    },
    /// `wait_synced` for a version the group neither serves nor recently served.
    #[error("group `{group}` has no snapshot with version `{version}`")]
    UnknownVersion {
        /// The group.
        group: String,
        /// The version asked for.
        version: String,
    },
    /// `wait_synced` timed out.
    #[error(
        "group `{group}` did not sync version `{version}` in time: {unsynced} connected node(s) not synced"
    )]
    Timeout {
        /// The group.
        group: String,
        /// The version waited for.
        version: String,
        /// How many connected nodes had not ACKed it (for a canary not yet promoted: how many
        /// canary nodes had not).
        unsynced: usize,
    },
    /// A node NACKed the version and the group had nothing to roll back to; the group stays on it.
    #[error("node `{node}` in group `{group}` rejected version `{version}`: {error}")]
    Nacked {
        /// The group.
        group: String,
        /// The rejected version.
        version: String,
        /// The node that rejected it.
        node: String,
        /// Envoy's error detail.
        error: String,
    },
    /// The version was NACKed and the group rolled back (or a canary candidate was discarded).
    #[error(
        "version `{version}` of group `{group}` was rejected and rolled back to `{to_version}`"
    )]
    RolledBack {
        /// The group.
        group: String,
        /// The rejected version.
        version: String,
        /// The version the group went back to.
        to_version: String,
    },
    /// A newer snapshot replaced the version before it synced.
    #[error("version `{version}` of group `{group}` was replaced before it synced")]
    Superseded {
        /// The group.
        group: String,
        /// The replaced version.
        version: String,
    },
    /// The first request on a stream carried no node (or a node without an id).
    #[error("the first request on a stream must carry a node with an id")]
    MissingNode,
    /// A per-type service got a request for another type.
    #[error("this stream serves {expected}, not {got}")]
    WrongType {
        /// The type the service serves.
        expected: &'static str,
        /// The type url in the request.
        got: String,
    },
    /// The gRPC transport failed.
    #[error("xds transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// This crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
