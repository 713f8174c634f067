//! A proxy-wasm host on wasmtime: load a filter built for Envoy, drive its contexts as Envoy
//! would, and see what it did, without Envoy.
//!
//! - [`Host`] holds the engine and the linker (built once); [`Host::compile`] makes a
//!   [`Compiled`] module, instantiated through an `InstancePre` on the pooling allocator.
//! - [`Plugin`] is one instance: its `Store` holds all state ([`HostState`]), nothing global.
//! - [`Harness`] drives a plugin for tests and scenarios: streams, a virtual clock, callouts
//!   to answer, metrics and logs to read, and a failure policy like Envoy's.
//! - [`scenario`] runs YAML scenarios (`host-runner run`).
//!
//! Host functions live in [`hostcalls`], one module per area of the ABI spec, each added to a
//! caller-supplied `Linker` as wasmtime-wasi does. ABI.md lists every function's status.

pub mod abi;
mod error;
pub mod harness;
pub mod host;
pub mod hostcalls;
mod memory;
pub mod plugin;
pub mod scenario;
pub mod state;

pub use abi::{AbiVersion, Action, LogLevel, MetricType, Status};
pub use error::{Error, Result};
pub use harness::{FailurePolicy, Harness, TraceEvent};
pub use host::{Compiled, Host, HostConfig};
pub use plugin::{GrpcEvent, Plugin};
pub use state::{
    Clock, HeaderMap, HostState, HttpCall, InstanceSettings, LocalResponse, LogEntry, Metric,
    Shared, Stream,
};
