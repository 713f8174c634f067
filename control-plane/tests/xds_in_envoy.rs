//! `shadowplane serve` driving real Envoys (`--concurrency 2`) over ADS from the shipped
//! bootstrap: weights in traffic and in config_dump, control plane restarts, NACK rollback,
//! and config canaries.

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowplane_e2e::control_plane::{BackgroundLoad, ControlPlane, ads_bootstrap};
use shadowplane_e2e::filter_stack::filter_wasm;
use shadowplane_e2e::{Client, Envoy, EnvoyOpts, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_shadowplane");
const SERVICE: &str = "checkout";
const PRIMARY: &str = "checkout-blue";
const SHADOW: &str = "checkout-green";

fn config(xds: u16, admin: u16, primary: u16, shadow: u16, extra_listener: Option<u16>) -> String {
    let wasm = filter_wasm();
    let extra = extra_listener
        .map(|p| format!("  - name: extra\n    address: 127.0.0.1:{p}\n"))
        .unwrap_or_default();
    format!(
        "\
xds: {{address: 127.0.0.1:{xds}}}
admin: {{address: 127.0.0.1:{admin}}}
filter:
  wasm: {wasm}
  routing: random
  report_interval_ms: 500
  auth_token: test-token
listeners:
  - name: ingress
    address: 127.0.0.1:0
{extra}services:
  - name: {SERVICE}
    listener: ingress
    groups:
      - name: {PRIMARY}
        role: primary
        endpoints: [127.0.0.1:{primary}]
      - name: {SHADOW}
        role: shadow
        endpoints: [127.0.0.1:{shadow}]
    weights: {{primary: 100, shadow: 0}}
",
        wasm = wasm.display()
    )
}

struct Stack {
    cp: ControlPlane,
    envoys: Vec<(String, Envoy)>,
    primary: Upstream,
    shadow: Upstream,
}

impl Stack {
    async fn start(nodes: &[&str], api_type: &str) -> Stack {
        let primary = Upstream::start(PRIMARY).await;
        let shadow = Upstream::start(SHADOW).await;
        let (pp, sp) = (primary.port(), shadow.port());
        let cp = ControlPlane::start(Path::new(BIN), |x, a| config(x, a, pp, sp, None))
            .await
            .unwrap();
        let mut envoys = Vec::new();
        for n in nodes {
            let envoy = Envoy::start(
                &ads_bootstrap(n, cp.xds_port, api_type),
                EnvoyOpts::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{n}: {e:#}\n{}", cp.log()));
            envoys.push((n.to_string(), envoy));
        }
        Stack {
            cp,
            envoys,
            primary,
            shadow,
        }
    }

    /// Rewrites the control plane's file with an extra listener on a port another socket
    /// holds: valid to the control plane, which cannot know, rejected by Envoy when it binds.
    /// Keep the returned socket alive while the NACK matters.
    fn write_config_with_a_busy_listener(&self) -> (StdListener, u16) {
        let squatter = StdListener::bind("127.0.0.1:0").unwrap();
        let busy = squatter.local_addr().unwrap().port();
        let (pp, sp) = (self.primary.port(), self.shadow.port());
        std::fs::write(
            self.cp.config_path(),
            config(self.cp.xds_port, self.cp.admin_port, pp, sp, Some(busy)),
        )
        .unwrap();
        (squatter, busy)
    }

    /// Waits until `node` shows NACKED while back on `version`; returns its status entry.
    async fn wait_nacked_on(&self, node: &str, version: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.cp.node(node).await.unwrap();
            if v["state"] == "NACKED" && v["target_version"] == version {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{node}: no NACK and rollback to {version}: {v}\n{}",
                self.cp.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn envoy(&self, node: &str) -> &Envoy {
        &self.envoys.iter().find(|(n, _)| n == node).unwrap().1
    }

    async fn urls(&self, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (_, e) in &self.envoys {
            out.push(e.listener_url("ingress", path).await);
        }
        out
    }
}

/// The weights of the service's `weighted_clusters` route in Envoy's config_dump.
fn route_weights(dump: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for rc in c["dynamic_route_configs"].as_array().into_iter().flatten() {
            for vh in rc["route_config"]["virtual_hosts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for r in vh["routes"].as_array().into_iter().flatten() {
                    for cw in r["route"]["weighted_clusters"]["clusters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        out.insert(
                            cw["name"].as_str().unwrap_or("").to_string(),
                            cw["weight"].as_u64().unwrap_or(0),
                        );
                    }
                }
            }
        }
    }
    out
}

/// The group weights of the filter's ECDS configuration in Envoy's config_dump.
fn filter_weights(dump: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for f in c["ecds_filters"].as_array().into_iter().flatten() {
            let json = f["ecds_filter"]["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap_or("{}");
            let cfg: Value = serde_json::from_str(json).unwrap_or_default();
            for g in cfg["groups"].as_array().into_iter().flatten() {
                out.insert(
                    g["name"].as_str().unwrap_or("").to_string(),
                    g["weight"].as_u64().unwrap_or(0),
                );
            }
        }
    }
    out
}

fn active_listeners(dump: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
            if !l["active_state"].is_null() {
                out.push(l["name"].as_str().unwrap_or("").to_string());
            }
        }
    }
    out
}

fn expected(p: u64, s: u64) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let all = BTreeMap::from([(PRIMARY.to_string(), p), (SHADOW.to_string(), s)]);
    // The route leaves out groups with no weight (Envoy's weighted_clusters needs weight > 0).
    let route = all
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    (route, all)
}

/// Polls every Envoy's config_dump until both the route and the filter carry `p`/`s`;
/// returns how long it took.
async fn wait_applied(stack: &Stack, p: u64, s: u64, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let (route, filter) = expected(p, s);
    loop {
        let mut all = true;
        for (_, e) in &stack.envoys {
            let dump = e.config_dump().await;
            if route_weights(&dump) != route || filter_weights(&dump) != filter {
                all = false;
            }
        }
        if all {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` requests spread over the Envoys; returns the shadow's share.
async fn shadow_share(stack: &Stack, n: usize) -> f64 {
    let urls = stack.urls("/measure").await;
    let client = Client::new();
    let res = client
        .run(n, 16, move |i| (urls[i % urls.len()].clone(), vec![]))
        .await;
    assert_eq!(res.count(200), n as u64, "{:?}", res.first_error);
    res.served_by(SHADOW) as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_the_bootstrap_alone_and_weights_show_in_traffic_and_config_dump() {
    let stack = Stack::start(&["envoy-a", "envoy-b"], "GRPC").await;
    // From the bootstrap alone: everything to the primary.
    assert!(
        stack
            .cp
            .wait_synced(&["envoy-a", "envoy-b"], "1", Duration::from_secs(10))
            .await
    );
    assert_eq!(shadow_share(&stack, 400).await, 0.0);
    assert_eq!(stack.shadow.received(), 0);
    assert!(stack.primary.received() >= 400);

    let background = BackgroundLoad::start(
        &stack.urls("/background").await,
        2,
        Duration::from_secs(120),
    );
    // 4000 requests per weight set: at 50/50 the share's standard deviation is 0.8 points.
    for (p, s) in [(100, 0), (90, 10), (50, 50), (0, 100)] {
        let version = stack
            .cp
            .set_weights(SERVICE, &[("primary", p), ("shadow", s)], &[])
            .await
            .unwrap();
        let took = wait_applied(&stack, u64::from(p), u64::from(s), Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!("weights {p}/{s} (version {version}) not in config_dump after 5 s")
            });
        assert!(
            took <= Duration::from_secs(1),
            "weights {p}/{s} took {took:?} to reach config_dump"
        );
        let share = shadow_share(&stack, 4000).await;
        assert!(
            (share - s as f64 / 100.0).abs() <= 0.03,
            "weights {p}/{s}: shadow share {share}"
        );
        assert!(
            stack
                .cp
                .wait_synced(&["envoy-a", "envoy-b"], &version, Duration::from_secs(5))
                .await
        );
    }
    let bg = background.stop().await;
    assert!(bg.sent > 100, "background load too small: {bg:?}");
    assert_eq!(
        bg.failed, 0,
        "requests failed during weight changes: {bg:?}"
    );

    // The CLI sets weights through the same API.
    let out = std::process::Command::new(BIN)
        .args([
            "weights",
            "set",
            SERVICE,
            "primary=70",
            "shadow=30",
            "--admin",
        ])
        .arg(stack.cp.url(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_applied(&stack, 70, 30, Duration::from_secs(5))
            .await
            .is_some()
    );
    let out = std::process::Command::new(BIN)
        .args(["status", "--admin"])
        .arg(stack.cp.url(""))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("envoy-a") && table.contains("envoy-b"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ads_serves_and_follows_weights() {
    let stack = Stack::start(&["envoy-delta"], "DELTA_GRPC").await;
    assert!(
        stack
            .cp
            .wait_synced(&["envoy-delta"], "1", Duration::from_secs(10))
            .await
    );
    assert_eq!(shadow_share(&stack, 200).await, 0.0);
    let background =
        BackgroundLoad::start(&stack.urls("/background").await, 2, Duration::from_secs(60));
    stack
        .cp
        .set_weights(SERVICE, &[("primary", 50), ("shadow", 50)], &[])
        .await
        .unwrap();
    let took = wait_applied(&stack, 50, 50, Duration::from_secs(5))
        .await
        .expect("not applied");
    assert!(took <= Duration::from_secs(1), "{took:?}");
    let share = shadow_share(&stack, 4000).await;
    assert!((share - 0.5).abs() <= 0.03, "{share}");
    let bg = background.stop().await;
    assert_eq!(bg.failed, 0, "{bg:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_keep_serving_without_the_control_plane_and_resync_when_it_returns() {
    let mut stack = Stack::start(&["envoy-a", "envoy-b"], "GRPC").await;
    assert!(
        stack
            .cp
            .wait_synced(&["envoy-a", "envoy-b"], "1", Duration::from_secs(10))
            .await
    );
    let v = stack
        .cp
        .set_weights(SERVICE, &[("primary", 90), ("shadow", 10)], &[])
        .await
        .unwrap();
    assert!(
        stack
            .cp
            .wait_synced(&["envoy-a", "envoy-b"], &v, Duration::from_secs(5))
            .await
    );

    let background = BackgroundLoad::start(
        &stack.urls("/background").await,
        2,
        Duration::from_secs(120),
    );
    stack.cp.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Last config kept: still 90/10.
    let share = shadow_share(&stack, 2000).await;
    assert!(
        (share - 0.10).abs() <= 0.03,
        "without the control plane: {share}"
    );

    stack.cp.restart().await.unwrap();
    // It resumes with the weights set before the kill (kept in its store, not the file's
    // 100/0), under a newer version, and every Envoy resyncs to it.
    let (_, services) = stack.cp.admin("GET", "/v1/services", None).await.unwrap();
    let resumed = services["version"].as_str().unwrap().to_string();
    assert!(
        resumed.parse::<u64>().unwrap() > v.parse::<u64>().unwrap(),
        "{resumed} after {v}"
    );
    assert!(
        stack
            .cp
            .wait_synced(&["envoy-a", "envoy-b"], &resumed, Duration::from_secs(30))
            .await,
        "{}",
        stack.cp.status().await.unwrap()
    );
    assert!(
        wait_applied(&stack, 90, 10, Duration::from_secs(5))
            .await
            .is_some()
    );
    stack
        .cp
        .set_weights(SERVICE, &[("primary", 50), ("shadow", 50)], &[])
        .await
        .unwrap();
    assert!(
        wait_applied(&stack, 50, 50, Duration::from_secs(5))
            .await
            .is_some()
    );
    let bg = background.stop().await;
    assert!(bg.sent > 100, "{bg:?}");
    assert_eq!(bg.failed, 0, "requests failed across the restart: {bg:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_resource_rolls_the_group_back_and_traffic_is_unaffected() {
    let both = ["envoy-a", "envoy-b"];
    let stack = Stack::start(&both, "GRPC").await;
    assert!(
        stack
            .cp
            .wait_synced(&both, "1", Duration::from_secs(10))
            .await
    );
    let good = stack
        .cp
        .set_weights(SERVICE, &[("primary", 80), ("shadow", 20)], &[])
        .await
        .unwrap();
    assert!(
        stack
            .cp
            .wait_synced(&both, &good, Duration::from_secs(5))
            .await
    );

    let (squatter, busy) = stack.write_config_with_a_busy_listener();
    let background =
        BackgroundLoad::start(&stack.urls("/background").await, 2, Duration::from_secs(60));
    let (status, answer) = stack.cp.reload(&[]).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let bad = answer["version"].as_str().unwrap().to_string();

    // Both Envoys fail to bind; the group goes back to the last snapshot they ACKed and each
    // node shows the NACK with Envoy's message.
    for n in both {
        let node = stack.wait_nacked_on(n, &good).await;
        let error = node["error"].as_str().unwrap_or("");
        assert!(
            error.contains("cannot bind") && error.contains(&busy.to_string()),
            "{n}: the error should be Envoy's, naming the port: {node}"
        );
    }
    let events = stack.cp.events(0).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "nacked" && e["version"] == bad.as_str()),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "rolled_back" && e["to_version"] == good.as_str()),
        "{events:?}"
    );
    // Envoy is on the last ACKed snapshot: no extra listener, 80/20 still.
    for n in both {
        let dump = stack.envoy(n).config_dump().await;
        assert_eq!(active_listeners(&dump), vec!["ingress".to_string()], "{n}");
    }
    assert!(
        wait_applied(&stack, 80, 20, Duration::from_secs(2))
            .await
            .is_some()
    );
    let share = shadow_share(&stack, 2000).await;
    assert!((share - 0.20).abs() <= 0.03, "{share}");
    let bg = background.stop().await;
    assert_eq!(bg.failed, 0, "{bg:?}");
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_node_gets_the_snapshot_first_and_its_nack_keeps_the_others_on_the_old_one() {
    let stack = Stack::start(&["envoy-canary", "envoy-rest"], "GRPC").await;
    let both = ["envoy-canary", "envoy-rest"];
    assert!(
        stack
            .cp
            .wait_synced(&both, "1", Duration::from_secs(10))
            .await
    );
    let since = stack
        .cp
        .events(0)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e["seq"].as_u64().unwrap());

    // A good snapshot: canary first, then the rest.
    let v = stack
        .cp
        .set_weights(
            SERVICE,
            &[("primary", 60), ("shadow", 40)],
            &["envoy-canary"],
        )
        .await
        .unwrap();
    assert!(
        stack
            .cp
            .wait_synced(&both, &v, Duration::from_secs(10))
            .await
    );
    assert!(
        wait_applied(&stack, 60, 40, Duration::from_secs(2))
            .await
            .is_some()
    );
    let events = stack.cp.events(since).await.unwrap();
    let seq = |pred: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        events
            .iter()
            .filter(|e| pred(e))
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let canary_acks = seq(&|e| {
        e["event"] == "acked" && e["node"] == "envoy-canary" && e["version"] == v.as_str()
    });
    let rest_acks =
        seq(&|e| e["event"] == "acked" && e["node"] == "envoy-rest" && e["version"] == v.as_str());
    let promoted = seq(&|e| e["event"] == "canary_promoted" && e["version"] == v.as_str());
    assert!(
        !canary_acks.is_empty() && !rest_acks.is_empty() && promoted.len() == 1,
        "{events:#?}"
    );
    assert!(
        canary_acks.iter().max() < promoted.first() && promoted.first() < rest_acks.iter().min(),
        "order: canary acks {canary_acks:?}, promoted {promoted:?}, rest acks {rest_acks:?}"
    );

    // A bad snapshot to the canary: its NACK keeps the rest on the old one.
    let (squatter, _) = stack.write_config_with_a_busy_listener();
    let since = stack
        .cp
        .events(0)
        .await
        .unwrap()
        .last()
        .map_or(0, |e| e["seq"].as_u64().unwrap());
    let (status, answer) = stack.cp.reload(&["envoy-canary"]).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let bad = answer["version"].as_str().unwrap().to_string();
    stack.wait_nacked_on("envoy-canary", &v).await;
    // Give a wrong promotion time to happen, then check the rest never saw the bad version.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rest = stack.cp.node("envoy-rest").await.unwrap();
    assert_eq!(rest["state"], "SYNCED", "{rest}");
    assert_eq!(rest["target_version"], v.as_str(), "{rest}");
    for t in rest["types"].as_array().unwrap() {
        assert_ne!(t["last_sent_version"], bad.as_str(), "{rest}");
    }
    let events = stack.cp.events(since).await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| e["node"] == "envoy-rest" && e["version"] == bad.as_str()),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "canary_promoted"),
        "{events:#?}"
    );
    let dump = stack.envoy("envoy-rest").config_dump().await;
    assert_eq!(active_listeners(&dump), vec!["ingress".to_string()]);
    drop(squatter);
}

/// Headers, body and the status a bad report must get.
type Case<'a> = (&'a [(&'a str, &'a str)], Vec<u8>, u16);

/// Requests per cluster in the control plane's store.
async fn stored_requests(cp: &ControlPlane) -> BTreeMap<String, u64> {
    let (_, v) = cp.admin("GET", "/v1/telemetry", None).await.unwrap();
    v["clusters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, c)| (k.clone(), c["stats"]["requests"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_stored_once_survives_a_restart_and_bad_reports_are_refused() {
    let mut stack = Stack::start(&["envoy-a"], "GRPC").await;
    assert!(
        stack
            .cp
            .wait_synced(&["envoy-a"], "1", Duration::from_secs(10))
            .await
    );
    stack
        .cp
        .set_weights(SERVICE, &[("primary", 50), ("shadow", 50)], &[])
        .await
        .unwrap();
    assert!(
        wait_applied(&stack, 50, 50, Duration::from_secs(5))
            .await
            .is_some()
    );
    shadow_share(&stack, 1000).await;
    let want = BTreeMap::from([
        (PRIMARY.to_string(), stack.primary.received()),
        (SHADOW.to_string(), stack.shadow.received()),
    ]);
    assert_eq!(want.values().sum::<u64>(), 1000);
    let deadline = Instant::now() + Duration::from_secs(15);
    while stored_requests(&stack.cp).await != want {
        assert!(
            Instant::now() < deadline,
            "stored {:?}, want {want:?}",
            stored_requests(&stack.cp).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Windows merge both workers' reports and carry the latency distribution.
    let (_, w) = stack
        .cp
        .admin("GET", &format!("/v1/telemetry/{PRIMARY}"), None)
        .await
        .unwrap();
    let windows = w["windows"].as_array().unwrap();
    assert!(!windows.is_empty());
    let sum: u64 = windows
        .iter()
        .map(|w| w["stats"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, want[PRIMARY]);
    assert!(
        windows
            .iter()
            .any(|w| w["stats"]["latency_ms"]["p99"].as_f64().is_some())
    );

    // Killed without warning: every acknowledged report is still there.
    stack.cp.restart().await.unwrap();
    assert_eq!(stored_requests(&stack.cp).await, want);

    // Bad reports: refused with the right status, counted, nothing stored, still serving.
    let client = Client::new();
    let url = stack.cp.url("/v1/telemetry");
    let proto = ("content-type", "application/x-protobuf");
    let good_token = ("authorization", "Bearer test-token");
    let cases: [Case; 4] = [
        (&[proto, ("authorization", "Bearer wrong")], vec![], 401),
        (&[proto, good_token], b"\x0a\xff\xff garbage".to_vec(), 400),
        (&[proto, good_token], vec![0u8; 2 << 20], 413),
        (
            &[("content-type", "application/json"), good_token],
            b"{}".to_vec(),
            415,
        ),
    ];
    for (headers, body, want_status) in cases {
        let (status, _, answer) = client
            .request(hyper::Method::POST, &url, headers, body.into())
            .await
            .unwrap();
        assert_eq!(status, want_status, "{}", String::from_utf8_lossy(&answer));
    }
    let (_, v) = stack.cp.admin("GET", "/v1/telemetry", None).await.unwrap();
    for counter in [
        "rejected_unauthorized",
        "rejected_malformed",
        "rejected_too_large",
        "rejected_content_type",
    ] {
        assert_eq!(v["counters"][counter], 1, "{counter}: {v}");
    }
    assert_eq!(stored_requests(&stack.cp).await, want);
    let (status, _, _) = client.get(&stack.cp.url("/healthz"), &[]).await.unwrap();
    assert_eq!(status, 200);
}
