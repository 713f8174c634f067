//! Test harness: real Envoy, real upstreams and a real telemetry collector on loopback.
//!
//! The integration tests of shadowplane run the filter inside a real Envoy process, in front of
//! real HTTP servers, reporting to a real collector, all on `127.0.0.1` with ports picked by the
//! kernel so tests can run in parallel:
//!
//! - [`envoy`]: starts Envoy from a bootstrap ([`envoy::render`] fills its placeholders) and
//!   reads its admin API (listener ports, stats, config dump) and its log.
//! - [`upstream`]: an HTTP/1.1 and h2c server that names itself in `x-served-by` and whose
//!   latency and status can be changed while it runs; also a program, `shadowplane-upstream`
//!   ([`upstream::upstream_bin`]), controlled over HTTP.
//! - [`collector`]: receives the filter's telemetry reports, checks the token, validates and
//!   de-duplicates them, and can be stopped and restarted on the same port.
//! - [`filter_stack`]: the shipped static bootstrap with the filter, two upstreams and a
//!   collector, and run-time weight changes through its watched files.
//! - [`control_plane`]: the `shadowplane serve` process on free ports, its admin API, the
//!   shipped ADS bootstrap adapted per Envoy, and a background load that counts failures.
//! - [`load`]: an HTTP/1.1 client and a bounded load generator that tallies statuses and
//!   `x-served-by`.

// The crate root is `harness.rs`, and a crate root looks for its modules beside itself
// (`tests/envoy.rs`); the paths keep them in `harness/`, next to the file that declares them,
// as the house layout (`foo.rs` beside `foo/`) wants.
#[path = "harness/collector.rs"]
pub mod collector;
#[path = "harness/control_plane.rs"]
pub mod control_plane;
#[path = "harness/envoy.rs"]
pub mod envoy;
#[path = "harness/filter_stack.rs"]
pub mod filter_stack;
#[path = "harness/load.rs"]
pub mod load;
#[path = "harness/server.rs"]
mod server;
#[path = "harness/upstream.rs"]
pub mod upstream;

use std::time::{Duration, Instant};

pub use collector::{Collector, TELEMETRY_PATH};
pub use envoy::{Envoy, EnvoyOpts, render};
pub use filter_stack::FilterStack;
pub use load::{Client, LoadResult};
pub use upstream::{Upstream, UpstreamHandle, UpstreamOptions};

/// How often the `wait_*` helpers look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `done` every [`POLL_INTERVAL`] until it returns true (then true) or `timeout` passes
/// (then false, after one last look).
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_gives_up_after_the_timeout() {
        let mut calls = 0;
        let started = Instant::now();
        assert!(
            !wait_until(Duration::from_millis(120), || {
                calls += 1;
                false
            })
            .await
        );
        assert!(started.elapsed() >= Duration::from_millis(120));
        assert!(calls >= 2, "{calls}");
        assert!(wait_until(Duration::ZERO, || true).await);
    }
}
