//! WAT test guests in real Envoy (V8, `--concurrency 2`) and in host-runner, on the same
//! traffic, and what Envoy shows of their effects compared. An HTTP guest: request headers as
//! the upstream received them, response headers and bodies as the client got them (a local
//! reply among them), an HTTP callout's answer carried into the response, and its counters,
//! gauges and histograms in `/stats`. An L4 guest behind `tcp_proxy`: the bytes each way,
//! held while paused, and its connection and close callbacks counted in `/stats`. Needs Envoy
//! (`cargo xtask setup`); without it the tests fail with that command.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shadowplane_e2e::envoy::render;
use shadowplane_e2e::{Client, Envoy, EnvoyOpts, Upstream};
use shadowplane_host_runner::abi::serialize_pairs;
use shadowplane_host_runner::{Action, Harness, Host, HostConfig};

/// Only the imports the guest uses: Envoy refuses a module that imports a function it lacks.
/// On every request: counts it, sets a gauge, records a histogram sample. Then by header:
/// `x-deny` gets a local 403; `x-callout` pauses for an HTTP callout to the `upstream`
/// cluster and resumes when it answers; any other request gets `x-added`, a replaced
/// `x-replace-me` and loses `x-remove-me`. Every response gets `x-wasm: 1`, its
/// `content-type` replaced and, after a callout, the callout's `:status` and `x-served-by`.
const GUEST: &str = r#"(module
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue_stream (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 131072))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32)
    (global.get $heap)
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get 0) (i32.const 7)) (i32.const -8)))))
  (func (export "proxy_abi_version_0_2_1"))
  (data (i32.const 1024) "wat.requests")
  (data (i32.const 1040) "wat.gauge")
  (data (i32.const 1056) "wat.sizes")
  (data (i32.const 1072) "x-deny")
  (data (i32.const 1080) "x-callout")
  (data (i32.const 1096) "x-added")
  (data (i32.const 1104) "yes")
  (data (i32.const 1112) "x-replace-me")
  (data (i32.const 1128) "replaced")
  (data (i32.const 1144) "x-remove-me")
  (data (i32.const 1160) "denied_by_wat")
  (data (i32.const 1176) "no entry")
  (data (i32.const 1192) "upstream")
  (data (i32.const 1208) ":status")
  (data (i32.const 1216) "x-served-by")
  (data (i32.const 1232) "x-wasm")
  (data (i32.const 1240) "1")
  (data (i32.const 1248) "content-type")
  (data (i32.const 1264) "text/wasm")
  (data (i32.const 1280) "x-callout-status")
  (data (i32.const 1304) "x-callout-served-by")
  ;; {"x-why": "policy"}
  (data (i32.const 1328) "@WHY@")
  ;; {":method": "GET", ":path": "/authz", ":authority": "upstream"}
  (data (i32.const 1360) "@CALL@")
  (data (i32.const 1456) "\00\00\00\00")
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define_metric (i32.const 0) (i32.const 1024) (i32.const 12) (i32.const 0)))
    (drop (call $define_metric (i32.const 1) (i32.const 1040) (i32.const 9) (i32.const 4)))
    (drop (call $define_metric (i32.const 2) (i32.const 1056) (i32.const 9) (i32.const 8)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $increment_metric (i32.load (i32.const 0)) (i64.const 1)))
    (drop (call $record_metric (i32.load (i32.const 4)) (i64.const 7)))
    (drop (call $record_metric (i32.load (i32.const 8)) (i64.const 42)))
    (i32.store (i32.const 104) (i32.const 0))
    (i32.store (i32.const 112) (i32.const 0))
    (i32.store (i32.const 116) (local.get 0))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1072) (i32.const 6) (i32.const 64) (i32.const 68)))
      (then
        (drop (call $send_local_response (i32.const 403) (i32.const 1160) (i32.const 13)
          (i32.const 1176) (i32.const 8) (i32.const 1328) (i32.const @WHY_LEN@) (i32.const -1)))
        (return (i32.const 1))))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1080) (i32.const 9) (i32.const 64) (i32.const 68)))
      (then
        (drop (call $http_call (i32.const 1192) (i32.const 8) (i32.const 1360) (i32.const @CALL_LEN@)
          (i32.const 0) (i32.const 0) (i32.const 1456) (i32.const 4) (i32.const 5000) (i32.const 72)))
        (return (i32.const 1))))
    (drop (call $add_header (i32.const 0) (i32.const 1096) (i32.const 7) (i32.const 1104) (i32.const 3)))
    (drop (call $replace_header (i32.const 0) (i32.const 1112) (i32.const 12) (i32.const 1128) (i32.const 8)))
    (drop (call $remove_header (i32.const 0) (i32.const 1144) (i32.const 11)))
    (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    ;; As the Rust SDK does: the stream that made the call is the one to act on.
    (drop (call $set_effective (i32.load (i32.const 116))))
    (drop (call $get_header (i32.const 6) (i32.const 1208) (i32.const 7) (i32.const 100) (i32.const 104)))
    (drop (call $get_header (i32.const 6) (i32.const 1216) (i32.const 11) (i32.const 108) (i32.const 112)))
    (drop (call $continue_stream (i32.const 0))))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 1232) (i32.const 6) (i32.const 1240) (i32.const 1)))
    (drop (call $replace_header (i32.const 2) (i32.const 1248) (i32.const 12) (i32.const 1264) (i32.const 9)))
    (if (i32.load (i32.const 104))
      (then (drop (call $add_header (i32.const 2) (i32.const 1280) (i32.const 16)
        (i32.load (i32.const 100)) (i32.load (i32.const 104))))))
    (if (i32.load (i32.const 112))
      (then (drop (call $add_header (i32.const 2) (i32.const 1304) (i32.const 19)
        (i32.load (i32.const 108)) (i32.load (i32.const 112))))))
    (i32.const 0))
)"#;

const BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: /}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: wat-guest
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: "{{WASM}}"}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT}}}}}
"#;

/// The three kinds of request, each sent this many times.
const ROUNDS: usize = 3;
const KINDS: [(&str, &[(&str, &str)]); 3] = [
    (
        "/plain",
        &[("x-replace-me", "original"), ("x-remove-me", "gone")],
    ),
    ("/deny", &[("x-deny", "1")]),
    ("/callout", &[("x-callout", "1")]),
];
/// The response headers the guest touches or that tell the paths apart.
const SHOWN: [&str; 6] = [
    "x-wasm",
    "content-type",
    "x-served-by",
    "x-why",
    "x-callout-status",
    "x-callout-served-by",
];
/// The request headers the guest touches, as the upstream receives them.
const FORWARDED: [&str; 3] = ["x-added", "x-replace-me", "x-remove-me"];

/// What one request showed: status, the `SHOWN` response headers, body, and the `FORWARDED`
/// request headers if it reached the upstream.
type Seen = (
    u16,
    BTreeMap<String, String>,
    Vec<u8>,
    Option<BTreeMap<String, String>>,
);

fn pick(names: &[&str], get: impl Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|n| get(n).map(|v| (n.to_string(), v)))
        .collect()
}

/// The guest's text with its two serialized header maps filled in.
fn guest_wat() -> String {
    let esc = |b: &[u8]| -> String { b.iter().map(|b| format!("\\{b:02x}")).collect() };
    let why = serialize_pairs([("x-why", "policy")].into_iter());
    let call = serialize_pairs(
        [
            (":method", "GET"),
            (":path", "/authz"),
            (":authority", "upstream"),
        ]
        .into_iter(),
    );
    assert!(1328 + why.len() < 1360 && 1360 + call.len() < 1456);
    GUEST
        .replace("@WHY@", &esc(&why))
        .replace("@WHY_LEN@", &why.len().to_string())
        .replace("@CALL@", &esc(&call))
        .replace("@CALL_LEN@", &call.len().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_host_runner_agree_on_a_wat_guests_headers_local_replies_callouts_and_stats() {
    let wasm = wat::parse_str(guest_wat()).expect("the guest assembles");
    let dir = tempfile::tempdir().expect("a temp dir");
    let wasm_path = dir.path().join("guest.wasm");
    std::fs::write(&wasm_path, &wasm).expect("write the guest");
    let upstream = Upstream::start("upstream").await;
    let bootstrap = render(
        BOOTSTRAP,
        &[
            ("WASM", wasm_path.display().to_string()),
            ("PORT", upstream.port().to_string()),
        ],
    );
    let envoy = Envoy::start(&bootstrap, EnvoyOpts::default())
        .await
        .expect("Envoy starts with the guest");
    let client = Client::new();

    // Envoy.
    let mut envoy_seen: Vec<Seen> = Vec::new();
    for _ in 0..ROUNDS {
        for (path, headers) in KINDS {
            let before = upstream.handle().requests().len();
            let (status, h, body) = client
                .get(&envoy.listener_url("main", path).await, headers)
                .await
                .expect("a response");
            let shown = pick(&SHOWN, |n| Some(h.get(n)?.to_str().ok()?.to_string()));
            let reqs = upstream.handle().requests();
            let forwarded = reqs[before..]
                .iter()
                .find(|r| r.uri.path() == path)
                .map(|r| {
                    pick(&FORWARDED, |n| {
                        Some(r.headers.get(n)?.to_str().ok()?.to_string())
                    })
                });
            envoy_seen.push((status, shown, body.to_vec(), forwarded));
        }
    }
    let requests = (ROUNDS * KINDS.len()) as u64;
    assert!(
        envoy
            .wait_for_counter("wasmcustom.wat.requests", requests, Duration::from_secs(15))
            .await,
        "Envoy's counter did not reach {requests}"
    );
    let stats = envoy.stats().await;
    let envoy_names: BTreeSet<String> = stats
        .keys()
        .filter_map(|k| k.strip_prefix("wasmcustom."))
        .map(str::to_string)
        .collect();
    let envoy_stat = |n: &str| {
        stats
            .get(&format!("wasmcustom.{n}"))
            .and_then(|v| v.parse::<i64>().ok())
    };

    // host-runner: the same requests; the upstream's real answers feed the response side and
    // the callout.
    let direct = client
        .get(&upstream.url("/authz"), &[])
        .await
        .expect("the upstream answers");
    let up_headers: Vec<(String, String)> = direct
        .1
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let up_status = direct.0.to_string();
    let mut response: Vec<(&str, &str)> = vec![(":status", up_status.as_str())];
    response.extend(up_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let host = Host::new(HostConfig::default()).expect("host");
    let mut h = Harness::from_compiled(&host.compile(&wasm).expect("compiles"))
        .with_clusters(&["upstream"])
        .start()
        .expect("starts");
    let mut ours: Vec<Seen> = Vec::new();
    for _ in 0..ROUNDS {
        for (path, headers) in KINDS {
            let mut req = vec![
                (":method", "GET"),
                (":path", path),
                (":authority", "localhost"),
                (":scheme", "http"),
            ];
            req.extend_from_slice(headers);
            let calls_before = h.http_calls().len();
            let mut action = h.request_headers(&req, true).expect("request headers");
            if let Some(call) = h.http_calls().get(calls_before).cloned() {
                assert_eq!(call.upstream, "upstream");
                assert_eq!(call.header(":path"), Some("/authz"));
                let extra: Vec<(&str, &str)> = response[1..].to_vec();
                h.respond_http(call.token, direct.0, &extra, &direct.2)
                    .expect("callout answered");
                action = Action::Continue;
            }
            let seen = if let Some(lr) = h.local_response().cloned() {
                let shown = pick(&SHOWN, |n| h.response_header(n));
                (lr.status as u16, shown, lr.body.clone(), None)
            } else {
                assert_eq!(action, Action::Continue, "{path}");
                let forwarded = pick(&FORWARDED, |n| h.request_header(n));
                h.response_headers(&response, false)
                    .expect("response headers");
                h.response_body(&direct.2, true).expect("body");
                let shown = pick(&SHOWN, |n| h.response_header(n));
                (direct.0, shown, direct.2.to_vec(), Some(forwarded))
            };
            ours.push(seen);
            h.end_stream().expect("end");
        }
    }

    for (i, (e, o)) in envoy_seen.iter().zip(&ours).enumerate() {
        assert_eq!(e, o, "request {i} ({})", KINDS[i % KINDS.len()].0);
    }
    assert_eq!(envoy_seen.len(), ours.len());
    // The paths are what they claim to be.
    assert_eq!(ours[1].0, 403);
    assert_eq!(
        ours[2].1.get("x-callout-status").map(String::as_str),
        Some("200")
    );
    assert_eq!(
        ours[0]
            .3
            .as_ref()
            .and_then(|f| f.get("x-added"))
            .map(String::as_str),
        Some("yes")
    );
    assert_eq!(h.metric_names(), envoy_names, "the guest's metric names");
    for name in ["wat.requests", "wat.gauge"] {
        assert_eq!(h.metric(name), envoy_stat(name), "{name}");
    }
    assert_eq!(h.metric("wat.requests"), Some(requests as i64));
    assert!(h.traps().is_empty(), "{:?}", h.traps());
}

/// An L4 guest with only the imports it uses: holds each side's bytes until its end of
/// stream, then prepends `> ` (downstream) or `< ` (upstream); counts connection closes by
/// side.
const L4_GUEST: &str = r#"(module
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 131072))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32)
    (global.get $heap)
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get 0) (i32.const 7)) (i32.const -8)))))
  (func (export "proxy_abi_version_0_2_1"))
  (data (i32.const 1024) "> ")
  (data (i32.const 1032) "< ")
  (data (i32.const 1040) "l4.downstream_closes")
  (data (i32.const 1064) "l4.upstream_closes")
  (data (i32.const 1088) "l4.connections")
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define_metric (i32.const 0) (i32.const 1040) (i32.const 20) (i32.const 0)))
    (drop (call $define_metric (i32.const 0) (i32.const 1064) (i32.const 18) (i32.const 4)))
    (drop (call $define_metric (i32.const 0) (i32.const 1088) (i32.const 14) (i32.const 8)))
    (i32.const 1))
  (func (export "proxy_on_new_connection") (param i32) (result i32)
    (drop (call $increment_metric (i32.load (i32.const 8)) (i64.const 1)))
    (i32.const 0))
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
    (if (result i32) (local.get 2)
      (then (drop (call $set_buffer (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 2))) (i32.const 0))
      (else (i32.const 1))))
  (func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32)
    (if (result i32) (local.get 2)
      (then (drop (call $set_buffer (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 1032) (i32.const 2))) (i32.const 0))
      (else (i32.const 1))))
  (func (export "proxy_on_downstream_connection_close") (param i32 i32)
    (drop (call $increment_metric (i32.load (i32.const 0)) (i64.const 1))))
  (func (export "proxy_on_upstream_connection_close") (param i32 i32)
    (drop (call $increment_metric (i32.load (i32.const 4)) (i64.const 1))))
)"#;

const L4_BOOTSTRAP: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: l4-guest
            vm_config:
              runtime: envoy.wasm.runtime.v8
              code: {local: {filename: "{{WASM}}"}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
  clusters:
  - name: echo
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{PORT}}}}}
"#;

/// A TCP server on loopback that reads each connection to its end, sends it all back and
/// closes.
async fn echo_server() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if conn.read_to_end(&mut got).await.is_ok() {
                    let _ = conn.write_all(&got).await;
                }
            });
        }
    });
    port
}

const L4_TEXTS: [&str; 3] = ["hello", "a second connection", "third"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_host_runner_agree_on_an_l4_guests_bytes_and_close_callbacks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wasm = wat::parse_str(L4_GUEST).expect("the guest assembles");
    let dir = tempfile::tempdir().expect("a temp dir");
    let wasm_path = dir.path().join("l4.wasm");
    std::fs::write(&wasm_path, &wasm).expect("write the guest");
    let port = echo_server().await;
    let bootstrap = render(
        L4_BOOTSTRAP,
        &[
            ("WASM", wasm_path.display().to_string()),
            ("PORT", port.to_string()),
        ],
    );
    let envoy = Envoy::start(&bootstrap, EnvoyOpts::default())
        .await
        .expect("Envoy starts with the L4 guest");
    let listen = envoy.listener_port("tcp").await;

    // Envoy: each text in two writes, then a half-close; the answer read to its end.
    let mut envoy_got = Vec::new();
    for text in L4_TEXTS {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", listen))
            .await
            .expect("connect");
        let (a, b) = text.split_at(2);
        s.write_all(a.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b.as_bytes()).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("Envoy answers in time")
            .expect("read");
        envoy_got.push(String::from_utf8_lossy(&out).into_owned());
    }
    let n = L4_TEXTS.len() as u64;
    for side in ["downstream", "upstream"] {
        assert!(
            envoy
                .wait_for_counter(
                    &format!("wasmcustom.l4.{side}_closes"),
                    n,
                    Duration::from_secs(15)
                )
                .await,
            "Envoy did not report {n} {side} closes"
        );
    }
    let stats = envoy.stats().await;
    let envoy_stat = |name: &str| {
        stats
            .get(&format!("wasmcustom.{name}"))
            .and_then(|v| v.parse::<i64>().ok())
    };

    // host-runner: the same bytes, the echo's answer fed back as upstream data.
    let host = Host::new(HostConfig::default()).expect("host");
    let mut h = Harness::from_compiled(&host.compile(&wasm).expect("compiles"))
        .start()
        .expect("starts");
    let mut ours = Vec::new();
    for text in L4_TEXTS {
        let (a, b) = text.split_at(2);
        assert_eq!(h.new_connection().expect("connection"), Action::Continue);
        assert_eq!(
            h.downstream_data(a.as_bytes(), false).expect("data"),
            Action::Pause
        );
        h.downstream_data(b.as_bytes(), false).expect("data");
        h.downstream_data(b"", true).expect("end of stream");
        let to_echo = h
            .stream()
            .map(|s| s.downstream_forwarded.clone())
            .unwrap_or_default();
        h.upstream_data(&to_echo, false).expect("data");
        h.upstream_data(b"", true).expect("end of stream");
        ours.push(
            String::from_utf8_lossy(
                &h.stream()
                    .map(|s| s.upstream_forwarded.clone())
                    .unwrap_or_default(),
            )
            .into_owned(),
        );
        // The peer closed both sides.
        h.connection_closed(true, 2).expect("downstream close");
        h.connection_closed(false, 2).expect("upstream close");
        h.end_stream().expect("end");
    }

    assert_eq!(envoy_got, ours, "the bytes the client got back");
    assert_eq!(ours[0], "< > hello");
    for name in [
        "l4.connections",
        "l4.downstream_closes",
        "l4.upstream_closes",
    ] {
        assert_eq!(h.metric(name), envoy_stat(name), "{name}");
    }
    assert!(h.traps().is_empty(), "{:?}", h.traps());
}
