//! Test harness: real Envoy, real upstreams and a real telemetry collector on loopback (work in progress).
