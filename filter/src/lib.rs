//! The shadowplane proxy-wasm filter: per-group telemetry and weighted, session-sticky routing
//! inside Envoy.
//!
//! [`routing`] and [`telemetry`] are plain Rust and unit-tested natively; `host` (compiled
//! only for Wasm) is the one module that talks to Envoy through proxy-wasm.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(target_arch = "wasm32")]
mod host;
pub mod routing;
pub mod telemetry;
