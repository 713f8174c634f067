//! The same traffic through the shadowplane filter in real Envoy (V8, `--concurrency 2`, the
//! shipped static bootstrap) and in host-runner, and what each shows compared: routing, the
//! filter's metric names and counters, and the reports the collector receives. Needs Envoy
//! (`cargo xtask setup`); without it the test fails with that command, as every Envoy test.

#[path = "support/wasm.rs"]
mod wasm;

use std::collections::BTreeSet;
use std::time::Duration;

use shadowplane_e2e::filter_stack::{TOKEN, filter_config};
use shadowplane_e2e::upstream::SERVED_BY;
use shadowplane_e2e::{Client, FilterStack};
use shadowplane_host_runner::{Action, Harness};
use shadowplane_wire::Report;

const REQUESTS: u64 = 20;
const INTERVAL_MS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_host_runner_agree_on_routing_metrics_and_reports() {
    let config = filter_config(1, 0, INTERVAL_MS);

    // Envoy.
    let stack = FilterStack::start(config.clone())
        .await
        .expect("the stack starts");
    let client = Client::new();
    for i in 0..REQUESTS {
        let (status, headers, _) = client
            .get(&stack.url(&format!("/d/{i}")), &[])
            .await
            .expect("a response");
        assert_eq!(status, 200);
        assert_eq!(
            headers.get(SERVED_BY).and_then(|v| v.to_str().ok()),
            Some("primary")
        );
        assert!(
            !headers
                .keys()
                .any(|k| k.as_str().starts_with("x-shadowplane"))
        );
    }
    let total = "wasmcustom.shadowplane.group.primary.rq_total";
    assert!(
        stack
            .envoy
            .wait_for_counter(total, REQUESTS, Duration::from_secs(15))
            .await,
        "Envoy's counter did not reach {REQUESTS}"
    );
    assert!(
        stack
            .collector
            .wait_for_requests(REQUESTS, Duration::from_secs(15))
            .await,
        "the collector did not hear of every request"
    );
    let envoy_stats = stack.envoy.stats().await;
    let envoy_names: BTreeSet<String> = envoy_stats
        .keys()
        .filter_map(|k| k.strip_prefix("wasmcustom."))
        .filter(|k| k.starts_with("shadowplane."))
        .map(str::to_string)
        .collect();
    let envoy_counter = |n: &str| {
        envoy_stats
            .get(&format!("wasmcustom.{n}"))
            .and_then(|v| v.parse::<i64>().ok())
    };
    let envoy_by_cluster = stack.collector.requests_by_cluster();
    assert_eq!(
        stack.collector.rejected(),
        0,
        "Envoy's reports were accepted"
    );

    // host-runner, the same configuration and requests, routed by the header the filter sets
    // as the shipped route table does (`cluster_header`).
    let mut h = Harness::from_compiled(wasm::filter())
        .with_cluster_header("x-shadowplane-cluster")
        .configure(config.to_string())
        .expect("configured");
    for i in 0..REQUESTS {
        let path = format!("/d/{i}");
        let a = h
            .request_headers(
                &[
                    (":method", "GET"),
                    (":path", &path),
                    (":authority", "localhost"),
                    (":scheme", "http"),
                ],
                true,
            )
            .expect("request headers");
        assert_eq!(a, Action::Continue);
        h.expect_request_header("x-shadowplane-cluster", "primary")
            .expect("routed as in Envoy");
        h.response_headers(&[(":status", "200")], false)
            .expect("response headers");
        h.response_body(b"ok", true).expect("body");
        h.end_stream().expect("end");
    }
    h.tick(Duration::from_millis(INTERVAL_MS)).expect("tick");
    let call = h.http_calls().first().cloned().expect("a report");
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(call.header("authorization"), Some(auth.as_str()));
    let report = Report::decode(&call.body).expect("a valid report");
    let ours: std::collections::BTreeMap<String, u64> = report
        .clusters
        .iter()
        .map(|c| (c.cluster.clone(), c.requests))
        .collect();
    h.respond_http(call.token, 200, &[], b"").expect("answered");
    h.tick(Duration::from_millis(INTERVAL_MS)).expect("tick");

    assert_eq!(ours.get("primary"), Some(&REQUESTS));
    assert_eq!(ours, envoy_by_cluster, "requests by cluster in the reports");
    assert_eq!(
        h.metric("shadowplane.group.primary.rq_total"),
        Some(REQUESTS as i64)
    );
    assert_eq!(h.metric_names(), envoy_names, "the filter's metric names");
    for name in [
        "shadowplane.group.primary.rq_total",
        "shadowplane.group.primary.rq_error",
    ] {
        assert_eq!(h.metric(name), envoy_counter(name), "{name}");
    }
    assert!(h.traps().is_empty(), "{:?}", h.traps());
}
