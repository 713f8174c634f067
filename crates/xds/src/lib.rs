//! Snapshot cache and xDS server for Envoy: ADS (state of the world and delta) and per-type services.
//!
//! This crate knows Envoy resources only. A caller builds a [`Snapshot`] (checked for
//! consistency before anything can be sent), hands it to a [`SnapshotCache`] for a node
//! group, and serves the cache with [`serve`] or [`xds_routes`]. The cache rolls changes out
//! make-before-break, rolls a group back when a node NACKs, runs canaries, and reports per
//! node sync state and events.
//!
//! # How a change reaches a node
//!
//! Each stream keeps what its node holds (SotW: the last ACKed response per type; delta: name
//! and version per resource) and recomputes after every request and every target change
//! which response to send next, so a push arriving mid-rollout just changes the goal. On ADS
//! streams a change goes out in [`ResourceType::ALL`] order, in three phases: clusters and
//! endpoints are added and updated (SotW: the union of what the node holds and the target,
//! under version `"{version}+mbb"` when it differs from the target), both ACKed; then
//! extension configs, listeners and routes, each after the previous one's ACK; then clusters
//! and endpoints the target no longer has are removed. Types whose resources did not change
//! are not sent. A first response to a fresh subscription goes out at once (Envoy orders its
//! startup itself). Per-type streams cannot see each other and send the target directly. One
//! response per type is in flight on a stream at a time, so every ACK is exact.
//!
//! # NACKs
//!
//! An answer to the latest response of a type carrying `error_detail` is a NACK; an answer to
//! an older response is ignored (SotW entirely; delta keeps its subscription changes). A NACK
//! of the group's snapshot rolls the group back to the last snapshot the NACKing node held in
//! full ([`Event::RolledBack`]), and every node converges back to it. Without such a snapshot
//! the group stays on the rejected one and the NACK is recorded (`wait_synced` fails with
//! [`Error::Nacked`]). A stream never resends the response its node just rejected, so a bad
//! snapshot does not loop. The node shows [`SyncState::Nacked`] until the next push.
//!
//! # Canaries
//!
//! [`SnapshotCache::set_snapshot_canary`] sends a candidate to some nodes; it is promoted once
//! they all hold it, and discarded if one of them rejects it.
//!
//! # Scale
//!
//! One `watch` channel per group wakes its streams on a change; resources are encoded once per
//! snapshot and shared (`Arc`) by every stream; responses are built only when the transport
//! can take them, so nothing queues per stream.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use shadowplane_xds::{Snapshot, SnapshotCache};
//! let cache = SnapshotCache::new();
//! cache.set_snapshot("edge", Snapshot::builder("v1").build()?)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:18000").await?;
//! shadowplane_xds::serve(cache.clone(), listener, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

mod cache;
mod error;
mod resource;
mod server;
mod snapshot;

pub use cache::{
    CanaryStatus, Event, GroupStatus, Nack, NodeStatus, SnapshotCache, SyncState, TypeStatus,
};
pub use error::{Error, Result};
pub use resource::{Resource, ResourceType};
pub use server::{serve, serve_with, xds_routes, xds_routes_with_shutdown};
pub use snapshot::{Snapshot, SnapshotBuilder};
