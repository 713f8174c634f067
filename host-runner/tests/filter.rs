//! The shadowplane filter and the empty example filter, run in host-runner: routing, the
//! telemetry callout on tick, metrics, how requests are attributed to clusters, the hostcalls an
//! ordinary request costs, and the lifecycle Envoy would drive.

#[path = "support/wasm.rs"]
mod wasm;

use std::collections::BTreeMap;
use std::time::Duration;

use shadowplane_filter::attribution::CHECK_FIRST;
use shadowplane_host_runner::{AbiVersion, Action, Error, Harness, LogLevel, Result};
use shadowplane_wire::Report;

const TELEMETRY: &str = r#"{
    "groups": [{"name": "blue", "weight": 1}, {"name": "green", "weight": 0}],
    "report_interval_ms": 1000,
    "telemetry": {"cluster": "collector", "auth_token": "s3cret", "timeout_ms": 500}
}"#;

/// The header the filter routes by, which the shipped route tables read with `cluster_header`.
const ROUTE_HEADER: &str = "x-shadowplane-cluster";

/// The filter in a host that routes like the shipped route tables: each request goes to the
/// cluster the filter names in [`ROUTE_HEADER`].
fn filter(config: &str) -> Result<Harness> {
    Harness::from_compiled(wasm::filter())
        .with_property(&["node", "id"], "node-7")
        .with_cluster_header(ROUTE_HEADER)
        .configure(config)
}

/// One request through the filter, answered with `status`.
fn request(h: &mut Harness, status: &str) -> Result<()> {
    let a = h.request_headers(
        &[(":method", "GET"), (":path", "/a"), (":authority", "svc")],
        true,
    )?;
    assert_eq!(a, Action::Continue);
    let a = h.response_headers(&[(":status", status)], false)?;
    assert_eq!(a, Action::Continue);
    h.response_body(b"hello", true)?;
    h.end_stream()
}

/// Envoy calls into the VM for every callback a module exports, on every request that reaches
/// it: the filter exports the ones it uses and no more (README, Overhead). A new export here is
/// a cost on every request.
#[test]
fn the_filter_exports_only_the_callbacks_it_uses() {
    let mut exports = wasm::filter().exports();
    exports.sort();
    assert_eq!(
        exports,
        [
            "memory",
            "proxy_abi_version_0_2_1",
            "proxy_on_configure",
            "proxy_on_context_create",
            "proxy_on_http_call_response",
            "proxy_on_log",
            "proxy_on_memory_allocate",
            "proxy_on_request_body",
            "proxy_on_request_headers",
            "proxy_on_response_body",
            "proxy_on_tick",
            "proxy_on_vm_start",
        ]
    );
}

#[test]
fn the_filter_declares_abi_0_2_1() {
    assert_eq!(wasm::filter().abi(), AbiVersion::V0_2_1);
    assert_eq!(wasm::empty_filter().abi(), AbiVersion::V0_2_1);
}

#[test]
fn a_request_gets_the_routing_header_of_the_only_weighted_group() -> Result<()> {
    let mut h = filter(TELEMETRY)?;
    let a = h.request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "svc")],
        true,
    )?;
    assert_eq!(a, Action::Continue);
    h.expect_request_header(ROUTE_HEADER, "blue")?;
    h.response_headers(&[(":status", "200")], true)?;
    // The filter adds nothing to the response.
    assert_eq!(
        h.stream()
            .and_then(|s| s.response_headers.as_ref())
            .map(|m| m.0.len()),
        Some(1)
    );
    h.end_stream()?;
    assert!(h.traps().is_empty(), "{:?}", h.traps());
    Ok(())
}

#[test]
fn sticky_routing_keeps_a_session_on_its_group() -> Result<()> {
    let config = r#"{"groups": [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}],
        "routing": "sticky", "session_key": {"header": "x-user"}}"#;
    let mut h = filter(config)?;
    let mut seen = std::collections::BTreeMap::new();
    for round in 0..3 {
        for user in ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"] {
            h.request_headers(
                &[
                    (":method", "GET"),
                    (":path", "/"),
                    (":authority", "s"),
                    ("x-user", user),
                ],
                true,
            )?;
            let group = h.request_header(ROUTE_HEADER).expect("routed");
            h.end_stream()?;
            let first = seen.entry(user).or_insert_with(|| group.clone());
            assert_eq!(*first, group, "user {user} moved in round {round}");
        }
    }
    let groups: std::collections::BTreeSet<_> = seen.values().collect();
    assert_eq!(
        groups.len(),
        2,
        "eight users should land on both groups: {seen:?}"
    );
    Ok(())
}

#[test]
fn telemetry_is_sent_on_tick_with_the_auth_header_and_a_decodable_report() -> Result<()> {
    let mut h = filter(TELEMETRY)?;
    for _ in 0..3 {
        request(&mut h, "200")?;
    }
    request(&mut h, "503")?;
    assert!(
        h.http_calls().is_empty(),
        "nothing is sent before the interval"
    );
    h.tick(Duration::from_millis(1000))?;
    let calls = h.http_calls();
    assert_eq!(calls.len(), 1, "one report after one interval");
    let call = &calls[0];
    assert_eq!(call.upstream, "collector");
    assert_eq!(call.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header(":path"), Some("/v1/telemetry"));
    assert_eq!(call.timeout_ms, 500);
    let report = Report::decode(&call.body).expect("the body is a valid report");
    assert_eq!(report.node_id, "node-7");
    assert_eq!(report.sequence, 1);
    assert_eq!(report.requests(), 4);
    let blue = report
        .clusters
        .iter()
        .find(|c| c.cluster == "blue")
        .expect("blue stats");
    assert_eq!(blue.responses_2xx, 3);
    assert_eq!(blue.responses_5xx, 1);
    assert_eq!(blue.response_bytes, 20);
    let token = call.token;
    h.respond_http(token, 200, &[], b"")?;
    assert_eq!(h.metric("shadowplane.reports_sent"), Some(1));
    assert_eq!(h.metric("shadowplane.reports_failed"), Some(0));
    Ok(())
}

#[test]
fn metrics_are_defined_and_group_counters_flush_on_tick() -> Result<()> {
    let mut h = filter(TELEMETRY)?;
    let names = h.metric_names();
    for m in [
        "shadowplane.reports_sent",
        "shadowplane.reports_failed",
        "shadowplane.reports_dropped",
        "shadowplane.reports_buffered",
    ] {
        assert!(names.contains(m), "{m} not defined: {names:?}");
    }
    request(&mut h, "200")?;
    request(&mut h, "500")?;
    assert_eq!(
        h.metric("shadowplane.group.blue.rq_total"),
        Some(0),
        "flushed per tick, not per request"
    );
    h.tick(Duration::from_millis(250))?;
    assert_eq!(h.metric("shadowplane.group.blue.rq_total"), Some(2));
    assert_eq!(h.metric("shadowplane.group.blue.rq_error"), Some(1));
    assert_eq!(
        h.histogram("shadowplane.group.blue.rq_time_ms")
            .map(|s| s.len()),
        Some(2)
    );
    Ok(())
}

#[test]
fn a_failed_or_timed_out_report_counts_as_failed_and_logs_once() -> Result<()> {
    let mut h = filter(TELEMETRY)?;
    request(&mut h, "200")?;
    h.tick(Duration::from_millis(1000))?;
    let token = h.http_calls()[0].token;
    h.respond_http(token, 503, &[], b"")?;
    assert_eq!(h.metric("shadowplane.reports_failed"), Some(1));
    assert!(h.logged(LogLevel::Warn, "report not accepted by the collector: 503"));
    // The next one is never answered: the host times it out after 500 ms.
    request(&mut h, "200")?;
    h.tick(Duration::from_millis(3000))?;
    assert!(
        h.http_calls()
            .iter()
            .any(|c| c.answered && c.token != token),
        "timeout delivered"
    );
    assert!(h.metric("shadowplane.reports_failed").unwrap_or(0) >= 2);
    let warns = h
        .logs()
        .iter()
        .filter(|l| l.message.contains("report not accepted"))
        .count();
    assert_eq!(warns, 1, "an outage logs one line");
    Ok(())
}

#[test]
fn an_unknown_telemetry_cluster_is_refused_by_the_host_and_logged() -> Result<()> {
    let mut h = Harness::from_compiled(wasm::filter())
        .with_clusters(&["other"])
        .with_cluster_header(ROUTE_HEADER)
        .configure(TELEMETRY)?;
    request(&mut h, "200")?;
    h.tick(Duration::from_millis(1000))?;
    assert!(h.http_calls().is_empty());
    assert!(h.logged(
        LogLevel::Warn,
        "cannot send reports to cluster \"collector\": BadArgument"
    ));
    Ok(())
}

#[test]
fn a_bad_configuration_is_rejected() {
    let h = Harness::from_compiled(wasm::filter()).configure(r#"{"groups": []}"#);
    match h {
        Err(Error::Rejected { what: "plugin" }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an empty group list was accepted"),
    }
}

#[test]
fn the_empty_filter_passes_everything_through() -> Result<()> {
    let mut h = Harness::from_compiled(wasm::empty_filter()).start()?;
    assert_eq!(
        h.request_headers(&[(":path", "/")], false)?,
        Action::Continue
    );
    assert_eq!(h.request_body(b"abc", false)?, Action::Continue);
    assert_eq!(h.request_body(b"def", true)?, Action::Continue);
    assert_eq!(
        h.response_headers(&[(":status", "204")], true)?,
        Action::Continue
    );
    assert_eq!(
        h.stream().map(|s| s.request_forwarded.clone()),
        Some(b"abcdef".to_vec())
    );
    h.end_stream()?;
    assert!(h.metric_names().is_empty());
    assert!(h.http_calls().is_empty());
    assert!(h.traps().is_empty());
    Ok(())
}

/// One ordinary request: routed to `cluster`, answered 200 with a body; returns the hostcalls
/// it cost.
fn ordinary_request(h: &mut Harness, cluster: &'static str) -> Result<BTreeMap<&'static str, u64>> {
    let before = h.hostcalls();
    h.request_headers(
        &[(":method", "GET"), (":path", "/a"), (":authority", "svc")],
        true,
    )?;
    h.expect_request_header(ROUTE_HEADER, cluster)?;
    h.response_headers(&[(":status", "200")], false)?;
    h.response_body(b"hello", true)?;
    h.end_stream()?;
    Ok(hostcalls_since(h, &before))
}

/// The hostcalls `h` made since its counts were `before`, those it made at all.
fn hostcalls_since(
    h: &Harness,
    before: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    h.hostcalls()
        .into_iter()
        .map(|(name, n)| (name, n - before.get(name).copied().unwrap_or(0)))
        .filter(|&(_, n)| n > 0)
        .collect()
}

/// The shadowplane filter's hostcall budget for an ordinary request: two clock reads, the
/// routing header, `:status` at the end, one histogram sample. Each costs Envoy a measurable
/// share of its work per request in V8 (README, Overhead; reading a value back costs the most),
/// so one more here is a cost users pay on every request: the test fails until this list and
/// the README agree with the filter again. Checked requests (the first ones of a configuration,
/// then a sample) also read the cluster Envoy used.
#[test]
fn an_ordinary_request_costs_the_filter_the_hostcalls_of_its_budget() -> Result<()> {
    let budget: BTreeMap<&str, u64> = [
        ("proxy_get_current_time_nanoseconds", 2),
        ("proxy_get_header_map_value", 1),
        ("proxy_record_metric", 1),
        ("proxy_replace_header_map_value", 1),
    ]
    .into();
    let mut h = filter(TELEMETRY)?;
    let mut checked = budget.clone();
    checked.insert("proxy_get_property", 1);
    assert_eq!(
        ordinary_request(&mut h, "blue")?,
        checked,
        "a checked request"
    );
    for _ in 1..CHECK_FIRST {
        ordinary_request(&mut h, "blue")?;
    }
    assert_eq!(ordinary_request(&mut h, "blue")?, budget, "an ordinary one");
    Ok(())
}

/// A route table that does not send each request to the group the filter named (here it
/// routes by another header): the first checked request catches it, the filter says so once,
/// and from then on counts every request where Envoy sent it.
#[test]
fn a_route_table_that_routes_elsewhere_makes_the_filter_read_every_cluster() -> Result<()> {
    let mut h = Harness::from_compiled(wasm::filter())
        .with_cluster_header("x-backend")
        .configure(TELEMETRY)?;
    for backend in ["admin", "blue", "admin"] {
        let before = h.hostcalls();
        h.request_headers(
            &[
                (":path", "/"),
                (":authority", "svc"),
                ("x-backend", backend),
            ],
            true,
        )?;
        h.expect_request_header(ROUTE_HEADER, "blue")?;
        h.response_headers(&[(":status", "200")], true)?;
        h.end_stream()?;
        let calls = hostcalls_since(&h, &before);
        assert_eq!(calls.get("proxy_get_property"), Some(&1), "{calls:?}");
    }
    // Past the checked requests too.
    for _ in 0..CHECK_FIRST {
        request(&mut h, "200")?;
    }
    let warned = |h: &Harness| {
        h.logs()
            .iter()
            .filter(|l| l.message.contains("reads the cluster of every request"))
            .count()
    };
    assert_eq!(warned(&h), 1, "{:?}", h.logs());
    assert!(h.logged(
        LogLevel::Warn,
        "the route table sent a request for group \"blue\" to \"admin\""
    ));
    h.tick(Duration::from_millis(1000))?;
    let report = Report::decode(&h.http_calls()[0].body).expect("a valid report");
    let count = |name: &str| {
        report
            .clusters
            .iter()
            .find(|c| c.cluster == name)
            .map_or(0, |c| c.requests)
    };
    assert_eq!(count("admin"), 2);
    assert_eq!(count("blue"), 1);
    // Requests without the header went to no cluster, and are counted so.
    assert_eq!(count("none"), CHECK_FIRST);
    assert_eq!(h.metric("shadowplane.group.admin.rq_total"), Some(2));
    Ok(())
}

/// Envoy calls `proxy_on_log` once at the end of every stream, reset or not; the filter keeps
/// nothing of a stream past it.
#[test]
fn no_stream_state_outlives_its_stream() -> Result<()> {
    let mut h = filter(TELEMETRY)?;
    request(&mut h, "200")?;
    // Reset before any response.
    h.request_headers(&[(":path", "/"), (":authority", "svc")], false)?;
    h.request_body(b"part", false)?;
    h.end_stream()?;
    h.tick(Duration::from_millis(1000))?;
    assert_eq!(h.metric("shadowplane.streams_active"), Some(0));
    let report = Report::decode(&h.http_calls()[0].body).expect("a valid report");
    let blue = &report.clusters[0];
    assert_eq!(
        (blue.requests, blue.responses_2xx, blue.no_response),
        (2, 1, 1)
    );
    assert_eq!(blue.request_bytes, 4);
    Ok(())
}

#[test]
fn the_empty_filter_makes_no_hostcall_per_request() -> Result<()> {
    let mut h = Harness::from_compiled(wasm::empty_filter()).start()?;
    let before = h.hostcalls();
    h.request_headers(&[(":path", "/")], true)?;
    h.response_headers(&[(":status", "200")], false)?;
    h.response_body(b"hello", true)?;
    h.end_stream()?;
    assert_eq!(h.hostcalls(), before);
    Ok(())
}
