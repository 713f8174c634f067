//! The contract between the shadowplane filter and the control plane.
//!
//! Three things cross that boundary and all of them live here, so that both sides compile
//! against one definition:
//!
//! - [`FilterConfig`]: the filter's plugin configuration (JSON, as Envoy passes it to
//!   `on_configure`), parsed and then checked into a [`ValidConfig`].
//! - [`Report`]: one telemetry window of one Envoy worker, encoded as protobuf by
//!   [`Report::encode`] and decoded and validated by [`Report::decode`].
//! - [`LatencySketch`]: the mergeable, log-bucketed latency distribution inside a report.
//!
//! The crate builds for `wasm32-wasip1` (inside the filter) and natively (control plane, tests),
//! and has no async runtime.

mod config;
mod error;
mod report;
mod sketch;

pub use config::{
    DEFAULT_REPORT_INTERVAL_MS, DEFAULT_ROUTE_HEADER, FilterConfig, GroupWeight, RoutingMode,
    SessionKey, TelemetryTarget, ValidConfig, ValidTelemetry,
};
pub use error::{Error, Result};
pub use report::{
    ClusterStats, MAX_CLUSTERS_PER_REPORT, REPORT_CONTENT_TYPE, Report, SCHEMA_VERSION,
};
pub use sketch::{LatencySketch, RELATIVE_ACCURACY};
