//! The shadowplane proxy-wasm filter: per-group telemetry and weighted, session-sticky routing
//! inside Envoy.
//!
//! [`routing`], [`attribution`], [`telemetry`], [`streams`] and [`callout`] are plain Rust and unit-tested
//! natively; `host` (compiled only for Wasm) is the one module that talks to Envoy, through
//! the proxy-wasm ABI v0.2.1 directly rather than the SDK (`host/abi.rs` says why).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod attribution;
pub mod callout;
#[cfg(target_arch = "wasm32")]
mod host;
pub mod routing;
pub mod streams;
pub mod telemetry;
