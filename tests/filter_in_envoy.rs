//! The shadowplane filter inside a real Envoy (`--concurrency 2`, V8), started from the shipped
//! static bootstrap, in front of two real upstreams and reporting to a real collector.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use shadowplane_e2e::filter_stack::filter_config;
use shadowplane_e2e::{Client, FilterStack, upstream::SERVED_BY};
use tokio::task::JoinSet;

const REPORT_WAIT: Duration = Duration::from_secs(15);

fn share(n: u64, of: u64) -> f64 {
    n as f64 / of as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_90_10_and_reports_every_request_exactly_once() {
    let stack = FilterStack::start(filter_config(90, 10, 500))
        .await
        .unwrap();
    let url = stack.url("/split");
    // 16 connections spread over both Envoy workers, so several VMs report.
    let res = Client::new()
        .run(2000, 16, move |_| (url.clone(), vec![]))
        .await;
    assert_eq!(
        res.count(200),
        2000,
        "statuses {:?}, first error {:?}",
        res.statuses,
        res.first_error
    );
    let shadow = share(res.served_by("shadow"), 2000);
    assert!((shadow - 0.10).abs() <= 0.03, "shadow share {shadow}");

    assert!(
        stack.collector.wait_for_requests(2000, REPORT_WAIT).await,
        "reports cover {} of 2000 requests",
        stack.collector.total_requests()
    );
    // Two more windows: nothing may be counted twice, late or resent.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(stack.collector.total_requests(), 2000);
    let by_cluster = stack.collector.requests_by_cluster();
    assert_eq!(
        by_cluster.get("primary").copied(),
        Some(res.served_by("primary"))
    );
    assert_eq!(
        by_cluster.get("shadow").copied(),
        Some(res.served_by("shadow"))
    );
    assert_eq!(stack.primary.served() + stack.shadow.served(), 2000);
    let workers: BTreeSet<String> = stack
        .collector
        .reports()
        .iter()
        .map(|r| r.worker.clone())
        .collect();
    assert!(
        workers.len() >= 2,
        "reports from one worker only: {workers:?}"
    );
    let primary = stack.collector.merged_cluster("primary");
    assert_eq!(primary.responses_2xx, res.served_by("primary"));
    // Bytes out: every upstream answers with its name and a newline.
    assert_eq!(primary.response_bytes, 8 * res.served_by("primary"));
    assert_eq!(primary.request_bytes, 0, "GET requests carry no body");
    assert_eq!(primary.latency.count(), primary.requests);
    assert_eq!(
        stack.collector.rejected(),
        0,
        "{:?}",
        stack.collector.last_rejection()
    );

    // Envoy's own stats show the filter's per-group metrics.
    let total = stack
        .envoy
        .stat_counter("wasmcustom.shadowplane.group.primary.rq_total")
        .await;
    assert_eq!(total, Some(res.served_by("primary")));
    let prom = stack.envoy.admin_get("/stats/prometheus").await;
    assert!(
        prom.contains("shadowplane_group_shadow_rq_total"),
        "prometheus output lacks the filter's metrics"
    );
    assert!(
        prom.contains("shadowplane_group_primary_rq_time_ms_bucket"),
        "no latency histogram"
    );
    // Nothing of the filter's reaches a client: it adds no response header.
    let (status, headers, _) = Client::new().get(&stack.url("/one"), &[]).await.unwrap();
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-served-by"), "{headers:?}");
    assert!(
        !headers
            .keys()
            .any(|k| k.as_str().starts_with("x-shadowplane")),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_delay_shows_in_the_merged_p50() {
    // Half the traffic to a primary that waits 20 ms, half to a shadow that does not: the
    // difference of their p50s, measured side by side, is what the delay added.
    let stack = FilterStack::start(filter_config(50, 50, 500))
        .await
        .unwrap();
    stack.primary.set_delay(Duration::from_millis(20));
    let url = stack.url("/slow");
    let res = Client::new()
        .run(400, 8, move |_| (url.clone(), vec![]))
        .await;
    assert_eq!(res.count(200), 400, "{:?}", res.first_error);
    assert!(stack.collector.wait_for_requests(400, REPORT_WAIT).await);

    let slow = stack.collector.merged_sketch("primary");
    let fast = stack.collector.merged_sketch("shadow");
    assert_eq!(slow.count() + fast.count(), 400);
    let (p50_slow, p50_fast) = (slow.quantile(0.5).unwrap(), fast.quantile(0.5).unwrap());
    let added = p50_slow - p50_fast;
    // The upstream says how long it really held requests: on a loaded machine the thread that
    // sleeps 20 ms wakes late, and the filter must see exactly that, not the nominal 20 ms.
    let injected = stack.primary.held_us().quantile(0.5).unwrap()
        - stack.shadow.held_us().quantile(0.5).unwrap();
    assert!(injected >= 19_800.0, "upstream held requests {injected} µs");
    let bound = 1000.0 + 0.01 * injected;
    eprintln!(
        "p50 without delay {p50_fast:.0} µs, with the delay {p50_slow:.0} µs: \
         added {added:.0} µs, upstream injected {injected:.0} µs"
    );
    assert!(
        (added - injected).abs() <= bound,
        "the delay added {added} µs to the p50 ({p50_fast} -> {p50_slow}), injected {injected} ± {bound}"
    );
    // The filter sees each request inside the client's view of it.
    let client_p50 = res.latency_us.quantile(0.5).unwrap();
    let merged_p50 = {
        let mut all = slow.clone();
        all.merge(&fast).unwrap();
        all.quantile(0.5).unwrap()
    };
    assert!(
        merged_p50 <= client_p50 * 1.02,
        "filter p50 {merged_p50} above client p50 {client_p50}"
    );
}

/// Sends `per_session` sequential requests for each of `sessions` sessions (16 at a time) and
/// returns the set of groups each session was served by.
async fn sessions(
    stack: &FilterStack,
    sessions: usize,
    per_session: usize,
) -> Vec<BTreeSet<String>> {
    let client = Client::new();
    let url = stack.url("/session");
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = JoinSet::new();
    for s in 0..sessions {
        let (client, url, gate) = (client.clone(), url.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let key = format!("session-{s}");
            let mut seen = BTreeSet::new();
            for _ in 0..per_session {
                let (status, headers, _) =
                    client.get(&url, &[("x-session-id", &key)]).await.unwrap();
                assert_eq!(status, 200);
                let by = headers
                    .get(SERVED_BY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?");
                seen.insert(by.to_string());
            }
            (s, seen)
        });
    }
    let mut out = vec![BTreeSet::new(); sessions];
    while let Some(r) = tasks.join_next().await {
        let (s, seen) = r.unwrap();
        out[s] = seen;
    }
    out
}

fn sticky(primary: u32, shadow: u32) -> serde_json::Value {
    let mut c = filter_config(primary, shadow, 500);
    c["routing"] = json!("sticky");
    c["session_key"] = json!({"header": "x-session-id"});
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_stay_and_only_primary_sessions_move() {
    let stack = FilterStack::start(sticky(90, 10)).await.unwrap();
    let before = sessions(&stack, 500, 10).await;
    for (s, groups) in before.iter().enumerate() {
        assert_eq!(groups.len(), 1, "session {s} was served by {groups:?}");
    }
    let on_shadow = |v: &[BTreeSet<String>]| v.iter().filter(|g| g.contains("shadow")).count();
    let shadow_before = on_shadow(&before);
    assert!(
        (20..=80).contains(&shadow_before),
        "{shadow_before} of 500 sessions on the shadow at 10%"
    );

    stack.set_weights(&sticky(70, 30)).await.unwrap();
    let after = sessions(&stack, 500, 4).await;
    let mut moved = 0;
    for (s, (a, b)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            b.len(),
            1,
            "session {s} was served by {b:?} after the change"
        );
        if a.contains("shadow") {
            assert!(
                b.contains("shadow"),
                "session {s} moved from the shadow back to the primary"
            );
        } else if b.contains("shadow") {
            moved += 1;
        }
    }
    let shadow_after = on_shadow(&after);
    assert_eq!(shadow_after, shadow_before + moved);
    // 20 of the primary's 90 points moved: about 22% of primary sessions.
    let moved_share = share(moved as u64, (500 - shadow_before) as u64);
    assert!(
        (0.12..=0.32).contains(&moved_share),
        "{moved} primary sessions moved ({moved_share})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_at_run_time_without_restart_or_failed_request() {
    let stack = FilterStack::start(filter_config(100, 0, 500))
        .await
        .unwrap();
    let pid = stack.envoy.pid();

    // Background traffic across every change, bounded in time and count.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut background = JoinSet::new();
    for _ in 0..4 {
        let (client, url) = (Client::new(), stack.url("/background"));
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        background.spawn(async move {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                sent.fetch_add(1, Ordering::Relaxed);
                if !matches!(client.get(&url, &[]).await, Ok((200, _, _))) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    // 4000 requests per weight set: at 50/50 the share's standard deviation is 0.8 points, so
    // the 3-point bound is almost 4 sigma away and the test does not flake.
    const N: usize = 4000;
    let client = Client::new();
    for (p, s) in [(90, 10), (50, 50), (0, 100), (100, 0)] {
        stack.set_weights(&filter_config(p, s, 500)).await.unwrap();
        let url = stack.url("/measure");
        let res = client.run(N, 16, move |_| (url.clone(), vec![])).await;
        assert_eq!(res.count(200), N as u64, "{:?}", res.first_error);
        let shadow = share(res.served_by("shadow"), N as u64);
        let want = f64::from(s) / 100.0;
        assert!(
            (shadow - want).abs() <= 0.03,
            "weights {p}/{s}: shadow share {shadow}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    while background.join_next().await.is_some() {}
    assert!(
        sent.load(Ordering::Relaxed) > 100,
        "background load too small to mean anything"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during weight changes"
    );
    assert_eq!(stack.envoy.pid(), pid);
    assert!(stack.envoy.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_drops_old_reports_keeps_memory_flat_and_resumes() {
    let mut config = filter_config(50, 50, 200);
    config["buffer_reports"] = json!(4);
    config["telemetry"]["timeout_ms"] = json!(500);
    let stack = FilterStack::start(config).await.unwrap();
    let url = stack.url("/outage");
    let client = Client::new();
    let warm = client.run(100, 4, {
        let url = url.clone();
        move |_| (url.clone(), vec![])
    });
    assert_eq!(warm.await.count(200), 100);
    assert!(stack.collector.wait_for_requests(100, REPORT_WAIT).await);

    stack.collector.stop().await;
    let dropped = "wasmcustom.shadowplane.reports_dropped";
    let started = Instant::now();
    let mut rss = BTreeMap::new();
    let (mut sent, mut ok) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(10) {
        for _ in 0..10 {
            sent += 1;
            if matches!(client.get(&url, &[]).await, Ok((200, _, _))) {
                ok += 1;
            }
        }
        rss.insert(started.elapsed().as_secs(), stack.envoy.rss_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ok, sent, "requests failed while the collector was down");
    let dropped_now = stack.envoy.stat_counter(dropped).await.unwrap_or(0);
    assert!(
        dropped_now > 0,
        "no report dropped after 10 s of outage with a buffer of 4"
    );
    // Memory: after the buffer filled (a second at 200 ms windows), RSS stays flat.
    let early = rss[&2];
    let late = *rss.values().last().unwrap();
    let growth = late.saturating_sub(early);
    eprintln!("outage: {dropped_now} reports dropped; RSS at 2 s {early}, at 10 s {late} bytes");
    assert!(
        growth < 4 << 20,
        "Envoy RSS grew {growth} bytes during the outage ({early} -> {late})"
    );

    let stored = stack.collector.total_requests();
    stack.collector.restart().await.unwrap();
    let res = client.run(50, 4, move |_| (url.clone(), vec![])).await;
    assert_eq!(res.count(200), 50);
    assert!(
        stack
            .collector
            .wait_for_requests(stored + 50, REPORT_WAIT)
            .await,
        "reports did not resume: {} stored before, {} now",
        stored,
        stack.collector.total_requests()
    );
    assert!(
        stack.collector.max_reports_dropped() > 0,
        "resumed reports do not carry the drop count"
    );
    assert!(
        stack
            .envoy
            .stat_counter("wasmcustom.shadowplane.reports_failed")
            .await
            .unwrap_or(0)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_configuration_is_rejected_with_the_filters_error_and_envoy_keeps_serving() {
    let stack = FilterStack::start(filter_config(100, 0, 500))
        .await
        .unwrap();
    let client = Client::new();
    let bad =
        json!({"groups": [{"name": "primary", "weight": 90}, {"name": "primary", "weight": 10}]});
    assert!(
        !stack.set_filter_config(&bad).await.unwrap(),
        "Envoy accepted a bad configuration"
    );
    assert!(
        stack
            .envoy
            .wait_for_log(
                "shadowplane: filter configuration: groups[1].name: \"primary\" is listed twice",
                Duration::from_secs(10)
            )
            .await,
        "no error line naming the field; log tail:\n{}",
        stack.envoy.log_tail()
    );
    assert!(stack.envoy.is_running());
    let url = stack.url("/after-bad-config");
    let res = client.run(50, 4, move |_| (url.clone(), vec![])).await;
    assert_eq!(res.count(200), 50, "{:?}", res.first_error);
    // Still the old configuration: everything on the primary, the filter still reporting.
    assert_eq!(res.served_by("primary"), 50);
    assert!(stack.collector.wait_for_requests(50, REPORT_WAIT).await);

    // A good configuration afterwards applies as usual.
    assert!(
        stack
            .set_filter_config(&filter_config(0, 100, 500))
            .await
            .unwrap()
    );
    let url = stack.url("/after-fix");
    let res = client.run(50, 4, move |_| (url.clone(), vec![])).await;
    assert_eq!(res.served_by("shadow"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_filter_the_routes_split_by_the_same_weights_and_refuse_other_clusters() {
    let stack = FilterStack::start_without_filter(filter_config(70, 30, 500))
        .await
        .unwrap();
    let url = stack.url("/fallback");
    let res = Client::new()
        .run(2000, 16, move |_| (url.clone(), vec![]))
        .await;
    assert_eq!(res.count(200), 2000, "{:?}", res.first_error);
    let shadow = share(res.served_by("shadow"), 2000);
    assert!((shadow - 0.30).abs() <= 0.03, "shadow share {shadow}");

    // A client naming a group itself is honoured only for the configured groups: it cannot
    // reach the telemetry cluster through the route header.
    let client = Client::new();
    let (status, headers, _) = client
        .get(&stack.url("/pick"), &[("x-shadowplane-cluster", "shadow")])
        .await
        .unwrap();
    assert_eq!(
        (status, headers.get(SERVED_BY).map(|v| v.to_str().unwrap())),
        (200, Some("shadow"))
    );
    let telemetry_posts = stack.collector.posts();
    for _ in 0..20 {
        let (status, headers, _) = client
            .get(
                &stack.url("/v1/telemetry"),
                &[("x-shadowplane-cluster", "shadowplane_telemetry")],
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(
            headers.get(SERVED_BY).is_some(),
            "answered by something other than a group"
        );
    }
    assert_eq!(stack.collector.posts(), telemetry_posts);
    // Nothing reports without the filter.
    assert_eq!(stack.collector.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_counted_as_bytes_in() {
    let stack = FilterStack::start(filter_config(100, 0, 500))
        .await
        .unwrap();
    let client = Client::new();
    for _ in 0..20 {
        let (status, _, _) = client
            .post(&stack.url("/upload"), &[], vec![b'x'; 3000])
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    assert!(stack.collector.wait_for_requests(20, REPORT_WAIT).await);
    let primary = stack.collector.merged_cluster("primary");
    assert_eq!(primary.request_bytes, 20 * 3000);
    assert_eq!(primary.response_bytes, 20 * 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_by_cookie_keeps_each_session_on_one_group() {
    let mut config = filter_config(50, 50, 500);
    config["routing"] = json!("sticky");
    config["session_key"] = json!({"cookie": "sid"});
    let stack = FilterStack::start(config).await.unwrap();
    let client = Client::new();
    let mut groups_seen = BTreeSet::new();
    for s in 0..60 {
        let cookie = format!("theme=dark; sid=user-{s}; lang=en");
        let mut seen = BTreeSet::new();
        for _ in 0..5 {
            let (status, headers, _) = client
                .get(&stack.url("/cookie"), &[("cookie", &cookie)])
                .await
                .unwrap();
            assert_eq!(status, 200);
            seen.insert(headers[SERVED_BY].to_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "session {s} was served by {seen:?}");
        groups_seen.extend(seen);
    }
    assert_eq!(
        groups_seen.len(),
        2,
        "60 sessions at 50/50 all landed on {groups_seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_table_that_sends_requests_elsewhere_is_caught_and_counted_where_envoy_sent_them() {
    // The filter names `primary` for every request, but a route before the header routes
    // sends /admin/ to `shadow`: the filter's check sees Envoy's cluster differ, says so, and
    // counts every request where Envoy really sent it.
    let config = filter_config(100, 0, 500);
    let stack = FilterStack::start(config.clone()).await.unwrap();
    stack
        .prepend_route(
            &config,
            "{match: {prefix: /admin/}, route: {cluster: shadow}}",
        )
        .await
        .unwrap();
    let client = Client::new();
    // Fewer than the checked first requests of each worker, so every one is checked.
    for path in ["/admin/a", "/ok"] {
        for i in 0..30 {
            let (status, headers, _) = client
                .get(&stack.url(&format!("{path}/{i}")), &[])
                .await
                .unwrap();
            assert_eq!(status, 200);
            let want = if path == "/ok" { "primary" } else { "shadow" };
            assert_eq!(headers[SERVED_BY], want);
        }
    }
    assert!(stack.collector.wait_for_requests(60, REPORT_WAIT).await);
    let by = stack.collector.requests_by_cluster();
    assert_eq!(by.get("shadow"), Some(&30), "{by:?}");
    assert_eq!(by.get("primary"), Some(&30), "{by:?}");
    assert!(
        stack
            .envoy
            .wait_for_log(
                "the route table sent a request for group \"primary\" to \"shadow\"",
                Duration::from_secs(5)
            )
            .await,
        "{}",
        stack.envoy.log_tail()
    );
    assert!(
        stack
            .envoy
            .wait_for_counter(
                "wasmcustom.shadowplane.group.shadow.rq_total",
                30,
                REPORT_WAIT
            )
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_is_counted_once_and_forgotten_resets_and_local_replies_too() {
    let config = filter_config(100, 0, 300);
    let stack = FilterStack::start(config.clone()).await.unwrap();
    // Envoy answers /direct itself: a local reply routed to no cluster.
    stack
        .prepend_route(
            &config,
            "{match: {prefix: /direct}, direct_response: {status: 204}}",
        )
        .await
        .unwrap();
    let client = Client::new();
    for i in 0..10 {
        let (status, _, _) = client
            .get(&stack.url(&format!("/ok/{i}")), &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
        let (status, _, _) = client.get(&stack.url("/direct"), &[]).await.unwrap();
        assert_eq!(status, 204);
    }
    // Clients that give up while the upstream holds the request: Envoy resets the stream.
    stack.primary.set_delay(Duration::from_millis(1500));
    let impatient = Client::with_timeout(Duration::from_millis(200));
    for i in 0..10 {
        let r = impatient.get(&stack.url(&format!("/slow/{i}")), &[]).await;
        assert!(r.is_err(), "the client should have given up: {r:?}");
    }
    stack.primary.set_delay(Duration::ZERO);
    // An upstream error answer.
    stack.primary.set_status(503);
    for i in 0..10 {
        let (status, _, _) = client
            .get(&stack.url(&format!("/err/{i}")), &[])
            .await
            .unwrap();
        assert_eq!(status, 503);
    }
    assert!(stack.collector.wait_for_requests(40, REPORT_WAIT).await);
    // Every request counted once: 10 answered, 10 direct, 10 reset, 10 failed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(stack.collector.total_requests(), 40);
    let primary = stack.collector.merged_cluster("primary");
    assert_eq!(primary.responses_2xx, 10, "{primary:?}");
    assert_eq!(primary.responses_5xx, 10, "{primary:?}");
    assert_eq!(primary.no_response, 10, "the resets: {primary:?}");
    assert_eq!(stack.collector.merged_cluster("none").requests, 10);
    // And nothing of those streams is left in the filter once the ticks have run.
    let gauge = "wasmcustom.shadowplane.streams_active";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = stack.envoy.stats().await;
        let active: Vec<&String> = stats
            .iter()
            .filter(|(k, _)| k.as_str() == gauge)
            .map(|(_, v)| v)
            .collect();
        assert!(!active.is_empty(), "no {gauge} in Envoy's stats");
        if active.iter().all(|v| v.as_str() == "0") {
            break;
        }
        assert!(Instant::now() < deadline, "{gauge} stays at {active:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_key_that_is_not_utf8_stays_sticky_and_breaks_nothing() {
    let stack = FilterStack::start(sticky(50, 50)).await.unwrap();
    let client = Client::new();
    let mut groups = BTreeSet::new();
    for s in 0..40u8 {
        // obs-text: bytes 0x80 to 0xFF are allowed in an HTTP header value.
        let key = [b'k', 0xE9, 0xFF, 0x80 + s];
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            let (status, headers, _) = client
                .get_bytes(&stack.url("/bytes"), &[("x-session-id", &key)])
                .await
                .unwrap();
            assert_eq!(status, 200);
            seen.insert(headers[SERVED_BY].to_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "session {s} moved: {seen:?}");
        groups.extend(seen);
    }
    assert_eq!(groups.len(), 2, "40 sessions at 50/50 all on {groups:?}");
    assert!(stack.collector.wait_for_requests(160, REPORT_WAIT).await);
    // A trap in the VM shows in Envoy's log as "Function: proxy_on_... failed: Uncaught ...".
    assert!(
        !stack.envoy.log().contains("failed: Uncaught"),
        "{}",
        stack.envoy.log_tail()
    );
}

/// Two listeners whose shadowplane filters share one VM per worker (the same `vm_id`, as
/// `shadowplane serve` configures them) but not their configuration.
const TWO_LISTENERS: &str = r#"
node: { id: two-listeners, cluster: test }
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
static_resources:
  listeners:
{{LISTENERS}}
  clusters:
  - name: primary
    type: STATIC
    load_assignment:
      cluster_name: primary
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{PRIMARY}} } } } }] }]
  - name: shadow
    type: STATIC
    load_assignment:
      cluster_name: shadow
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{SHADOW}} } } } }] }]
  - name: telemetry
    type: STATIC
    load_assignment:
      cluster_name: telemetry
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{COLLECTOR}} } } } }] }]
"#;

const ONE_LISTENER: &str = r#"
  - name: {{NAME}}
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {{NAME}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /, headers: [{ name: x-shadowplane-cluster, string_match: { exact: primary } }] }
                route: { cluster_header: x-shadowplane-cluster }
              - match: { prefix: /, headers: [{ name: x-shadowplane-cluster, string_match: { exact: shadow } }] }
                route: { cluster_header: x-shadowplane-cluster }
              - match: { prefix: / }
                route: { cluster: primary }
          http_filters:
          - name: shadowplane
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: shadowplane
                root_id: shadowplane
                vm_config:
                  vm_id: shadowplane
                  runtime: envoy.wasm.runtime.v8
                  code: { local: { filename: "{{WASM}}" } }
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{CONFIG}}'
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_that_share_a_vm_route_each_request_by_its_own_configuration() {
    use shadowplane_e2e::filter_stack::{TOKEN, filter_wasm};
    use shadowplane_e2e::{Collector, Envoy, EnvoyOpts, Upstream, render};

    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let collector = Collector::start(TOKEN).await;
    let wasm = filter_wasm().display().to_string();
    let listener = |name: &str, primary_weight: u32| {
        let mut config = filter_config(primary_weight, 100 - primary_weight, 300);
        config["telemetry"]["cluster"] = json!("telemetry");
        render(
            ONE_LISTENER,
            &[
                ("NAME", name.to_string()),
                ("WASM", wasm.clone()),
                ("CONFIG", config.to_string()),
            ],
        )
    };
    let bootstrap = render(
        TWO_LISTENERS,
        &[
            (
                "LISTENERS",
                listener("to_primary", 100) + &listener("to_shadow", 0),
            ),
            ("PRIMARY", primary.port().to_string()),
            ("SHADOW", shadow.port().to_string()),
            ("COLLECTOR", collector.port().to_string()),
        ],
    );
    let envoy = Envoy::start(&bootstrap, EnvoyOpts::default())
        .await
        .unwrap();
    let a = envoy.listener_url("to_primary", "/a").await;
    let b = envoy.listener_url("to_shadow", "/b").await;
    // Interleaved, several at a time, so both workers serve both listeners.
    let client = Client::new();
    let mut tasks = JoinSet::new();
    for i in 0..200 {
        let (client, url) = (
            client.clone(),
            if i % 2 == 0 { a.clone() } else { b.clone() },
        );
        tasks.spawn(async move {
            let (status, headers, _) = client.get(&url, &[]).await.unwrap();
            assert_eq!(status, 200);
            (url, headers[SERVED_BY].to_str().unwrap().to_string())
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (url, by) = r.unwrap();
        let want = if url == a { "primary" } else { "shadow" };
        assert_eq!(by, want, "{url} was served by {by}");
    }
    assert!(collector.wait_for_requests(200, REPORT_WAIT).await);
    let by = collector.requests_by_cluster();
    assert_eq!(by.get("primary"), Some(&100), "{by:?}");
    assert_eq!(by.get("shadow"), Some(&100), "{by:?}");
    // The two configurations really lived in the same VMs: Envoy runs 4 V8 VMs here (with a
    // vm_id per listener it runs 8, measured), so each worker's VM held both root contexts.
    let stats = envoy.stats().await;
    assert_eq!(
        stats
            .get("wasm.envoy.wasm.runtime.v8.active")
            .map(String::as_str),
        Some("4")
    );
}
