//! Scenarios against a WAT guest, with the trace kept as a snapshot: a change in what the host
//! calls, or in what order, shows up as a diff (`UPDATE_EXPECT=1` rewrites it).

#[path = "support/guest.rs"]
mod guest;
#[path = "support/wasm.rs"]
mod wasm;

use expect_test::expect;
use guest::{Guest, RET, RET2, VM_START};
use shadowplane_host_runner::scenario::Scenario;

/// Denies requests without `x-token` with a local 401; others get `x-seen: yes` and go on.
/// Logs each response status it sees.
fn gatekeeper() -> Guest {
    let mut g = Guest::new();
    let token = g.s(b"x-token");
    let seen = g.s(b"x-seen");
    let yes = g.s(b"yes");
    let details = g.s(b"no_token");
    let body = g.s(b"token required");
    let headers = g.map(&[("www-authenticate", "Token")]);
    let msg = g.s(b"response on its way");
    g.func(VM_START).func(&format!(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (if (result i32) (call $get_header (i32.const 0) {token} (i32.const {RET}) (i32.const {RET2}))
              (then
                (drop (call $send_local_response (i32.const 401) {details} {body} {headers} (i32.const -1)))
                (i32.const 1))
              (else
                (drop (call $replace_header (i32.const 0) {seen} {yes}))
                (i32.const 0))))
          (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
            (drop (call $log (i32.const 2) {msg}))
            (i32.const 0))"#
    ))
}

const SCENARIO: &str = r#"
steps:
  - request:
      headers: {":path": /, x-token: abc}
      expect: {action: continue, request_headers: {x-seen: "yes"}, local_response: null}
      response:
        headers: {":status": "200"}
  - request:
      headers: [[":path", /], [accept, a], [accept, b]]
      expect:
        action: pause
        local_response: 401
        response_headers: {www-authenticate: Token, ":status": "401"}
        logs: [response on its way]
      response:
        headers: {":status": "200"}
"#;

#[test]
fn a_scenario_trace_matches_its_snapshot() {
    let compiled = gatekeeper().compile(wasm::host());
    let sc = Scenario::from_yaml(SCENARIO, "inline").expect("scenario parses");
    let out = sc.run(&compiled).expect("runs");
    assert!(out.passed(), "{}", out.render());
    expect![[r#"
        [     0 ms] start: proxy_on_vm_start, proxy_on_configure
        [     0 ms] stream 2: proxy_on_context_create
        [     0 ms]   proxy_on_request_headers(2 headers, eos=true) -> Continue
        [     0 ms]   ok step 1 request: action Continue (got Some(Continue))
        [     0 ms]   ok step 1 request: request header x-seen = Some("yes") (got Some("yes"))
        [     0 ms]   ok step 1 request: local response None (got None)
        [     0 ms]   log Info: response on its way
        [     0 ms]   proxy_on_response_headers(1 headers, eos=true) -> Continue
        [     0 ms] stream 2: proxy_on_done, proxy_on_log, proxy_on_delete
        [     0 ms] stream 3: proxy_on_context_create
        [     0 ms]   proxy_on_request_headers(3 headers, eos=true) -> Pause
        [     0 ms]   local reply 401 (no_token) on stream 3
        [     0 ms]   proxy_on_response_headers(2 headers, eos=false) for the local reply
        [     0 ms]   log Info: response on its way
        [     0 ms]   ok step 2 request: action Pause (got Some(Pause))
        [     0 ms]   ok step 2 request: response header :status = Some("401") (got Some("401"))
        [     0 ms]   ok step 2 request: response header www-authenticate = Some("Token") (got Some("Token"))
        [     0 ms]   ok step 2 request: local response Some(401) (got Some(401))
        [     0 ms]   ok step 2 request: a log line contains "response on its way"
        [     0 ms]   response skipped: the stream was answered locally
        [     0 ms] stream 3: proxy_on_done, proxy_on_log, proxy_on_delete
        8 of 8 expectations held
    "#]]
    .assert_eq(&out.render());
}

/// Opens a gRPC call on each request and echoes what the reply brought into logs.
fn grpc_guest() -> Guest {
    let mut g = Guest::new();
    let cluster = g.s(b"backend");
    let service = g.s(b"pkg.Svc");
    let method = g.s(b"Get");
    let md = g.map(&[]);
    let msg = g.s(b"q");
    let got_message = g.s(b"grpc message");
    let closed = g.s(b"grpc closed");
    g.func(VM_START)
        .func(&format!(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (drop (call $grpc_call {cluster} {service} {method} {md} {msg} (i32.const 1000) (i32.const {RET})))
            (i32.const 0))"#
        ))
        .func(&format!(
            r#"(func (export "proxy_on_grpc_receive") (param i32 i32 i32)
            (call $rec (local.get 2))
            (drop (call $log (i32.const 2) {got_message})))"#
        ))
        .func(&format!(
            r#"(func (export "proxy_on_grpc_close") (param i32 i32 i32)
            (call $rec (local.get 2))
            (drop (call $log (i32.const 2) {closed})))"#
        ))
}

#[test]
fn grpc_replies_in_a_scenario_reach_the_plugin() {
    let text = r#"
clusters: [backend]
steps:
  - request:
      headers: {":path": /}
  - expect: {grpc_calls: 1}
  - respond_grpc: {call: 1, initial_metadata: {a: b}, messages: [abc, de], status: 7, message: denied}
  - expect:
      logs: [grpc message, grpc closed]
      histogram_counts: {probe: 3}
"#;
    let compiled = grpc_guest().compile(wasm::host());
    let out = Scenario::from_yaml(text, "inline")
        .expect("parses")
        .run(&compiled)
        .expect("runs");
    assert!(out.passed(), "{}", out.render());
    assert_eq!(out.checks, 4);
    let wrong = text.replace("grpc_calls: 1", "grpc_calls: 2");
    let out = Scenario::from_yaml(&wrong, "inline")
        .expect("parses")
        .run(&compiled)
        .expect("runs");
    assert_eq!(out.failures.len(), 1, "{}", out.render());
}

/// An L4 guest: holds downstream bytes until the end, then prepends what the foreign function
/// `stamp` answers; records connection closes; keeps the arguments of its own foreign
/// function in shared data; accepts only configurations that start with `o`.
fn l4_guest() -> Guest {
    let mut g = Guest::new();
    let stamp = g.s(b"stamp");
    let none = g.s(b"");
    let key = g.s(b"last-foreign");
    g.func(VM_START)
        .func(&format!(
            r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
            (drop (call $get_buffer (i32.const 7) (i32.const 0) (local.get 1) (i32.const {RET}) (i32.const {RET2})))
            (i32.and (i32.gt_u (local.get 1) (i32.const 0))
                     (i32.eq (i32.load8_u (i32.load (i32.const {RET}))) (i32.const 111))))"#
        ))
        .func(r#"(func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))"#)
        .func(&format!(
            r#"(func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
            (if (result i32) (local.get 2)
              (then
                (drop (call $foreign {stamp} {none} (i32.const {RET}) (i32.const {RET2})))
                (drop (call $set_buffer (i32.const 2) (i32.const 0) (i32.const 0) (i32.load (i32.const {RET})) (i32.load (i32.const {RET2}))))
                (i32.const 0))
              (else (i32.const 1))))"#
        ))
        .func(r#"(func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32) (i32.const 0))"#)
        .func(
            r#"(func (export "proxy_on_downstream_connection_close") (param i32 i32)
            (call $rec (i32.add (i32.const 200) (local.get 1))))"#,
        )
        .func(
            r#"(func (export "proxy_on_upstream_connection_close") (param i32 i32)
            (call $rec (i32.add (i32.const 300) (local.get 1))))"#,
        )
        .func(&format!(
            r#"(func (export "proxy_on_foreign_function") (param i32 i32 i32)
            (drop (call $get_buffer (i32.const 8) (i32.const 0) (local.get 2) (i32.const {RET}) (i32.const {RET2})))
            (drop (call $set_shared {key} (i32.load (i32.const {RET})) (i32.load (i32.const {RET2})) (i32.const 0)))
            (call $rec (local.get 1)))"#
        ))
}

#[test]
fn connections_foreign_functions_and_reconfiguration_in_a_scenario() {
    let text = r#"
plugin: {config: ok}
foreign_functions: {stamp: "[v1] "}
steps:
  - connection:
      events:
        - downstream: he
        - downstream_end: llo
        - upstream: world
        - close_upstream: remote
        - close_downstream: local
      expect:
        action: continue
        downstream_forwarded: "[v1] hello"
        upstream_forwarded: world
        histogram_counts: {probe: 2}
  - call_foreign: {function_id: 9, args: ping}
  - expect: {shared_data: {last-foreign: ping}, histogram_counts: {probe: 3}}
  - configure: {config: xyz, accepted: false}
  - configure: {config: {"on": 1}, accepted: false}
  - configure: {config: okay}
"#;
    let compiled = l4_guest().compile(wasm::host());
    let out = Scenario::from_yaml(text, "inline")
        .expect("parses")
        .run(&compiled)
        .expect("runs");
    assert!(out.passed(), "{}", out.render());
    assert_eq!(out.checks, 9);
    let probe = out.metrics.iter().find(|m| m.name == "probe");
    assert_eq!(probe.map(|m| m.samples.clone()), Some(vec![302, 201, 9]));
    let trace = out.render();
    assert!(
        trace.contains("proxy_on_downstream_data(5 bytes, eos=true)"),
        "{trace}"
    );

    // Each kind of expectation fails when it does not hold.
    for (from, to) in [
        (
            "accepted: false}\n  - configure: {config: {",
            "accepted: true}\n  - configure: {config: {",
        ),
        (
            "downstream_forwarded: \"[v1] hello\"",
            "downstream_forwarded: hello",
        ),
        ("upstream_forwarded: world", "upstream_forwarded: worl"),
        ("last-foreign: ping", "last-foreign: pong"),
        (
            "- configure: {config: okay}",
            "- configure: {config: okay, accepted: false}",
        ),
    ] {
        let wrong = text.replace(from, to);
        assert_ne!(wrong, text, "{from}");
        let out = Scenario::from_yaml(&wrong, "inline")
            .expect("parses")
            .run(&compiled)
            .expect("runs");
        assert_eq!(out.failures.len(), 1, "{from}: {}", out.render());
    }
}
