//! Guests written in WAT that call host functions directly, so each status the spec defines
//! is checked, including out-of-bounds pointers, which must come back as
//! INVALID_MEMORY_ACCESS and never crash the host.

#[path = "support/guest.rs"]
mod guest;
#[path = "support/wasm.rs"]
mod wasm;

use std::sync::Arc;
use std::time::Duration;

use guest::{Guest, RET, RET2, RET3, VM_START};
use shadowplane_host_runner::{
    AbiVersion, Action, FailurePolicy, Harness, Host, HostConfig, LogLevel, Result, Shared,
};

const OK: u64 = 0;
const NOT_FOUND: u64 = 1;
const BAD_ARGUMENT: u64 = 2;
const PARSE_FAILURE: u64 = 4;
const OOB: u64 = 6;
const EMPTY: u64 = 7;
const CAS_MISMATCH: u64 = 8;
const UNIMPLEMENTED: u64 = 12;

/// A guest whose `proxy_on_request_headers` evaluates each expression (an i32 status) and
/// records it, in order.
fn probe(build: impl FnOnce(&mut Guest) -> Vec<String>) -> Guest {
    let mut g = Guest::new();
    let calls = build(&mut g);
    let body: String = calls
        .iter()
        .map(|c| format!("    (call $rec {c})\n"))
        .collect();
    g.func(VM_START).func(&format!(
        "(func (export \"proxy_on_request_headers\") (param i32 i32 i32) (result i32)\n{body}    (i32.const 0))"
    ))
}

fn run_probe(g: &Guest) -> Result<(Harness, Vec<u64>)> {
    let mut h = Harness::from_compiled(&g.compile(wasm::host()))
        .with_clusters(&["collector"])
        .with_foreign(
            "echo",
            Arc::new(|args: &[u8]| args.iter().rev().copied().collect()),
        )
        .with_property(&["node", "id"], "n1")
        .configure("plugin-config")?;
    h.request_headers(&[(":path", "/probe"), (":method", "GET")], false)?;
    let got = h.histogram("probe").unwrap_or_default();
    Ok((h, got))
}

#[test]
fn header_functions_return_the_spec_statuses() -> Result<()> {
    let g = probe(|g| {
        let path = g.s(b":path");
        let nope = g.s(b"nope");
        let added = g.s(b"x-added");
        let yes = g.s(b"yes");
        let echo = g.s(b"x-echo");
        vec![
            format!("(call $get_header (i32.const 0) {path} (i32.const {RET}) (i32.const {RET2}))"),
            // Echo what came back, to check the value and not only the status.
            format!(
                "(call $add_header (i32.const 0) {echo} (i32.load (i32.const {RET})) (i32.load (i32.const {RET2})))"
            ),
            format!("(call $get_header (i32.const 0) {nope} (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $get_header (i32.const 9) {path} (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $replace_header (i32.const 0) {added} {yes})"),
            format!("(call $remove_header (i32.const 0) {nope})"),
            // Response headers do not exist yet.
            format!("(call $get_header (i32.const 2) {path} (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $map_size (i32.const 0) (i32.const {RET3}))"),
            format!("(call $get_pairs (i32.const 0) (i32.const {RET}) (i32.const {RET2}))"),
        ]
    });
    let (h, got) = run_probe(&g)?;
    assert_eq!(
        got,
        vec![
            OK,
            OK,
            NOT_FOUND,
            BAD_ARGUMENT,
            OK,
            OK,
            BAD_ARGUMENT,
            OK,
            OK
        ]
    );
    h.expect_request_header("x-echo", "/probe")?;
    h.expect_request_header("x-added", "yes")?;
    Ok(())
}

#[test]
fn out_of_bounds_pointers_give_invalid_memory_access_everywhere() -> Result<()> {
    // Memory is 4 pages (262144 bytes): pointer and length pairs that leave it, and return
    // pointers whose 4 or 8 bytes do not fit.
    let bad = [
        (0xFFFF_FFF0u32, 32u32),
        (262_140, 8),
        (u32::MAX, 1),
        (300_000, 0),
        (1, u32::MAX),
    ];
    let bad_ret = [0xFFFF_FFF0u32, 262_142, u32::MAX, 300_000, 262_141];
    let g = probe(|g| {
        let key = g.s(b":path");
        let mut calls = Vec::new();
        for ((p, l), r) in bad.into_iter().zip(bad_ret) {
            let pl = format!("(i32.const {p}) (i32.const {l})");
            calls.push(format!("(call $log (i32.const 2) {pl})"));
            calls.push(format!(
                "(call $get_header (i32.const 0) {pl} (i32.const {RET}) (i32.const {RET2}))"
            ));
            calls.push(format!(
                "(call $get_header (i32.const 0) {key} (i32.const {r}) (i32.const {RET2}))"
            ));
            calls.push(format!("(call $set_pairs (i32.const 0) {pl})"));
            calls.push(format!(
                "(call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) {pl})"
            ));
            calls.push(format!(
                "(call $get_property {pl} (i32.const {RET}) (i32.const {RET2}))"
            ));
            calls.push(format!("(call $set_shared {pl} {key} (i32.const 0))"));
            calls.push(format!(
                "(call $define_metric (i32.const 0) {pl} (i32.const {RET}))"
            ));
            calls.push(format!("(call $now (i32.const {r}))"));
            calls.push(format!(
                "(call $http_call {pl} {pl} {pl} {pl} (i32.const 10) (i32.const {RET}))"
            ));
            calls.push(format!(
                "(call $send_local_response (i32.const 500) {pl} {pl} {pl} (i32.const -1))"
            ));
            calls.push(format!(
                "(call $foreign {pl} {pl} (i32.const {RET}) (i32.const {RET2}))"
            ));
        }
        calls
    });
    let (h, got) = run_probe(&g)?;
    // (300000, 0) is a zero-length read past the end: still outside memory.
    assert_eq!(got.len(), bad.len() * 12);
    for (i, s) in got.iter().enumerate() {
        assert_eq!(*s, OOB, "call {} of bad pair {:?}", i % 12, bad[i / 12]);
    }
    assert!(h.traps().is_empty());
    assert!(h.local_response().is_none());
    Ok(())
}

#[test]
fn wasi_calls_answer_wasi_errnos() -> Result<()> {
    let g = probe(|g| {
        // The text lands at 1024 (the first data address), 18 bytes; the iovec is built at
        // 200 by the first call.
        let _text = g.s(b"hello from stdout\n");
        vec![
            // fd_write(1, iov at 200 with 1 entry) after writing the iovec.
            format!(
                "(block (result i32) (i32.store (i32.const 200) (i32.const 1024)) (i32.store (i32.const 204) (i32.const 18)) (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const {RET})))"
            ),
            format!(
                "(call $fd_write (i32.const 5) (i32.const 200) (i32.const 1) (i32.const {RET}))"
            ),
            format!(
                "(call $fd_write (i32.const 1) (i32.const -8) (i32.const 1) (i32.const {RET}))"
            ),
            format!("(call $clock_time_get (i32.const 0) (i64.const 1) (i32.const {RET}))"),
            format!("(call $clock_time_get (i32.const 9) (i64.const 1) (i32.const {RET}))"),
            format!("(call $random_get (i32.const {RET}) (i32.const 8))"),
            format!("(call $random_get (i32.const 1024) (i32.const 100000))"),
            format!("(call $environ_sizes_get (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $args_sizes_get (i32.const {RET}) (i32.const -2))"),
            format!(
                "(call $fd_read (i32.const 0) (i32.const 200) (i32.const 1) (i32.const {RET}))"
            ),
            format!("(call $environ_get (i32.const {RET}) (i32.const 2048))"),
            format!("(call $environ_get (i32.const -4) (i32.const 2048))"),
            format!("(call $args_get (i32.const {RET}) (i32.const 2048))"),
            format!(
                "(call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const {RET}))"
            ),
        ]
    });
    let compiled = g.compile(wasm::host());
    let mut h = Harness::from_compiled(&compiled)
        .with_settings(|s| s.env = vec![("MODE".into(), "test".into())])
        .start()?;
    h.request_headers(&[(":path", "/")], true)?;
    let got = h.histogram("probe").unwrap_or_default();
    // SUCCESS 0, BADF 8, FAULT 21, INVAL 28, NOSYS 52.
    assert_eq!(got, vec![0, 8, 21, 0, 28, 0, 28, 0, 21, 8, 0, 21, 0, 52]);
    assert!(h.logged(LogLevel::Info, "hello from stdout"));
    assert!(h.logged(
        LogLevel::Warn,
        "wasi_snapshot_preview1.path_open is not implemented"
    ));
    Ok(())
}

#[test]
fn buffers_properties_metrics_and_foreign_functions() -> Result<()> {
    let g = probe(|g| {
        let plugin_name = g.s(b"plugin_name\0");
        let node = g.s(b"node\0id\0");
        let missing = g.s(b"no\0such\0");
        let set_path = g.s(b"wasm\0mine\0");
        let value = g.s(b"v");
        let counter = g.s(b"c1");
        let echo = g.s(b"echo");
        let none = g.s(b"none");
        let args = g.s(b"abc");
        let out = g.s(b"x-foreign");
        let cfg = g.s(b"x-config");
        vec![
            format!(
                "(call $get_buffer (i32.const 7) (i32.const 0) (i32.const -1) (i32.const {RET}) (i32.const {RET2}))"
            ),
            format!(
                "(call $add_header (i32.const 0) {cfg} (i32.load (i32.const {RET})) (i32.load (i32.const {RET2})))"
            ),
            format!(
                "(call $get_buffer (i32.const 42) (i32.const 0) (i32.const 1) (i32.const {RET}) (i32.const {RET2}))"
            ),
            // No HTTP callout response outside its callback.
            format!(
                "(call $get_buffer (i32.const 4) (i32.const 0) (i32.const 1) (i32.const {RET}) (i32.const {RET2}))"
            ),
            format!(
                "(call $get_buffer (i32.const 2) (i32.const 0) (i32.const 1) (i32.const {RET}) (i32.const {RET2}))"
            ),
            format!("(call $get_property {plugin_name} (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $get_property {node} (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $get_property {missing} (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $set_property {set_path} {value})"),
            format!("(call $define_metric (i32.const 7) {counter} (i32.const {RET}))"),
            format!("(call $define_metric (i32.const 0) {counter} (i32.const {RET3}))"),
            format!("(call $increment_metric (i32.load (i32.const {RET3})) (i64.const 5))"),
            format!("(call $increment_metric (i32.load (i32.const {RET3})) (i64.const -1))"),
            format!("(call $increment_metric (i32.const 999) (i64.const 1))"),
            format!("(call $get_metric (i32.load (i32.const {RET3})) (i32.const {RET}))"),
            format!("(call $get_metric (i32.const 0) (i32.const {RET}))"),
            format!("(call $foreign {echo} {args} (i32.const {RET}) (i32.const {RET2}))"),
            format!(
                "(call $add_header (i32.const 0) {out} (i32.load (i32.const {RET})) (i32.load (i32.const {RET2})))"
            ),
            format!("(call $foreign {none} {args} (i32.const {RET}) (i32.const {RET2}))"),
            format!("(call $set_effective (i32.const 999))"),
            "(call $done)".to_string(),
            "(call $continue_stream (i32.const 2))".to_string(),
            "(call $continue_stream (i32.const 9))".to_string(),
            "(call $close_stream (i32.const 7))".to_string(),
            "(call $unknown (i32.const 1))".to_string(),
            "(call $unknown (i32.const 2))".to_string(),
            format!("(call $get_log_level (i32.const {RET}))"),
            format!("(call $set_tick (i32.const 0))"),
            format!("(call $log (i32.const 9) {value})"),
            format!("(call $log (i32.const 5) {value})"),
        ]
    });
    let (h, got) = run_probe(&g)?;
    assert_eq!(
        got,
        vec![
            OK,
            OK,
            BAD_ARGUMENT,
            NOT_FOUND,
            OK,
            OK,
            OK,
            NOT_FOUND,
            OK,
            BAD_ARGUMENT,
            OK,
            OK,
            BAD_ARGUMENT,
            NOT_FOUND,
            OK,
            NOT_FOUND,
            OK,
            OK,
            NOT_FOUND,
            BAD_ARGUMENT,
            NOT_FOUND,
            OK,
            BAD_ARGUMENT,
            BAD_ARGUMENT,
            UNIMPLEMENTED,
            UNIMPLEMENTED,
            OK,
            OK,
            BAD_ARGUMENT,
            OK
        ]
    );
    h.expect_request_header("x-config", "plugin-config")?;
    h.expect_request_header("x-foreign", "cba")?;
    assert_eq!(h.metric("c1"), Some(5));
    let unimplemented = h
        .logs()
        .iter()
        .filter(|l| l.message.contains("env.proxy_not_in_any_spec"))
        .count();
    assert_eq!(unimplemented, 1, "an unimplemented function logs once");
    Ok(())
}

#[test]
fn shared_data_compare_and_swap_and_queues() -> Result<()> {
    let g = probe(|g| {
        let k = g.s(b"k");
        let v1 = g.s(b"v1");
        let v2 = g.s(b"v2");
        let q = g.s(b"q");
        let vm = g.s(b"");
        let item = g.s(b"item");
        vec![
            format!(
                "(call $get_shared {k} (i32.const {RET}) (i32.const {RET2}) (i32.const {RET3}))"
            ),
            format!("(call $set_shared {k} {v1} (i32.const 0))"),
            format!(
                "(call $get_shared {k} (i32.const {RET}) (i32.const {RET2}) (i32.const {RET3}))"
            ),
            format!(
                "(call $set_shared {k} {v2} (i32.add (i32.load (i32.const {RET3})) (i32.const 1)))"
            ),
            format!("(call $set_shared {k} {v2} (i32.load (i32.const {RET3})))"),
            // The CAS read before the last write is stale now.
            format!("(call $set_shared {k} {v1} (i32.load (i32.const {RET3})))"),
            format!("(call $register_queue {q} (i32.const {RET}))"),
            format!("(call $resolve_queue {vm} {q} (i32.const {RET2}))"),
            format!("(call $enqueue (i32.load (i32.const {RET2})) {item})"),
            format!(
                "(call $dequeue (i32.load (i32.const {RET})) (i32.const {RET2}) (i32.const {RET3}))"
            ),
            format!(
                "(call $dequeue (i32.load (i32.const {RET})) (i32.const {RET2}) (i32.const {RET3}))"
            ),
            format!("(call $enqueue (i32.const 999) {item})"),
            format!("(call $resolve_queue {vm} {k} (i32.const {RET2}))"),
        ]
    });
    let (h, got) = run_probe(&g)?;
    assert_eq!(
        got,
        vec![
            NOT_FOUND,
            OK,
            OK,
            CAS_MISMATCH,
            OK,
            CAS_MISMATCH,
            OK,
            OK,
            OK,
            OK,
            EMPTY,
            NOT_FOUND,
            NOT_FOUND
        ]
    );
    assert_eq!(
        h.shared().shared_data("k").map(|(v, _)| v),
        Some(b"v2".to_vec())
    );
    Ok(())
}

#[test]
fn queues_notify_the_registering_worker() -> Result<()> {
    // Worker 0 registers "jobs" at start; worker 1 (another build, as a second plugin in the
    // same VM id would be) resolves it and enqueues on each request; worker 0's
    // on_queue_ready dequeues and records the item's length.
    let mut g = Guest::new();
    let q = g.s(b"jobs");
    let g = g
        .func(&format!(
            r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32)
            (call $define_probe)
            (drop (call $register_queue {q} (i32.const 100)))
            (i32.const 1))"#
        ))
        .func(&format!(
            r#"(func (export "proxy_on_queue_ready") (param i32 i32)
            (call $rec (local.get 1))
            (call $rec (call $dequeue (local.get 1) (i32.const {RET}) (i32.const {RET2})))
            (call $rec (i32.load (i32.const {RET2}))))"#
        ));
    let mut producer = Guest::new();
    let q = producer.s(b"jobs");
    let vm = producer.s(b"");
    let item = producer.s(b"12345");
    let producer = producer.func(&format!(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (drop (call $resolve_queue {vm} {q} (i32.const {RET})))
            (drop (call $enqueue (i32.load (i32.const {RET})) {item}))
            (i32.const 0))"#
    ));
    let compiled = g.compile(wasm::host());
    let shared = Shared::new();
    let mut w0 = Harness::from_compiled(&compiled)
        .with_shared(shared.clone(), 0)
        .start()?;
    let mut w1 = Harness::from_compiled(&producer.compile(wasm::host()))
        .with_shared(shared.clone(), 1)
        .start()?;
    w1.request_headers(&[(":path", "/")], true)?;
    assert_eq!(
        w0.histogram("probe"),
        Some(vec![]),
        "not delivered before worker 0 runs"
    );
    w0.deliver_queued()?;
    assert_eq!(w0.histogram("probe"), Some(vec![1, OK, 5]));
    Ok(())
}

#[test]
fn pause_then_continue_from_a_callout_response() -> Result<()> {
    let mut g = Guest::new();
    let cluster = g.s(b"authz");
    let headers = g.map(&[
        (":method", "GET"),
        (":path", "/check"),
        (":authority", "authz"),
    ]);
    let no_path = g.map(&[(":method", "GET"), (":authority", "authz")]);
    let body = g.s(b"");
    let empty = g.map(&[]);
    let g = g
        .func(VM_START)
        .func(&format!(r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (i32.store (i32.const 300) (local.get 0))
            (call $rec (call $http_call {cluster} {no_path} {body} {empty} (i32.const 1000) (i32.const {RET})))
            (call $rec (call $http_call {cluster} {headers} {body} {empty} (i32.const 1000) (i32.const {RET})))
            (i32.const 1))"#))
        .func(r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
            (call $rec (local.get 1))
            (i32.eqz (local.get 2)))"#)
        .func(&format!(r#"(func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
            (call $rec (local.get 2))
            (call $rec (local.get 3))
            (call $rec (call $get_buffer (i32.const 4) (i32.const 0) (i32.const -1) (i32.const {RET}) (i32.const {RET2})))
            (call $rec (call $set_effective (i32.load (i32.const 300))))
            (call $rec (call $continue_stream (i32.const 0))))"#));
    let mut h = Harness::from_compiled(&g.compile(wasm::host()))
        .with_clusters(&["authz"])
        .start()?;
    assert_eq!(h.request_headers(&[(":path", "/")], false)?, Action::Pause);
    assert_eq!(h.request_body(b"ab", false)?, Action::Pause);
    assert_eq!(h.request_body(b"cd", true)?, Action::Continue);
    // The body was held while paused: the second call saw all four bytes.
    assert_eq!(
        h.stream().map(|s| s.request_forwarded.clone()),
        Some(b"abcd".to_vec())
    );
    assert_eq!(h.stream().map(|s| s.request_paused), Some(false));
    let calls = h.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header(":path"), Some("/check"));
    let token = calls[0].token;
    h.respond_http(token, 200, &[("x-ok", "1")], b"allowed")?;
    assert_eq!(
        h.histogram("probe"),
        Some(vec![BAD_ARGUMENT, OK, 2, 4, 2, 7, OK, OK, OK])
    );
    assert!(
        h.respond_http(token, 200, &[], b"").is_err(),
        "a callout is answered once"
    );
    Ok(())
}

#[test]
fn a_local_response_goes_through_the_response_path() -> Result<()> {
    let mut g = Guest::new();
    let details = g.s(b"denied_by_policy");
    let body = g.s(b"no");
    let headers = g.map(&[("x-why", "policy")]);
    let g = g
        .func(VM_START)
        .func(&format!(r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (call $rec (call $send_local_response (i32.const 403) {details} {body} {headers} (i32.const -1)))
            (i32.const 1))"#))
        .func(r#"(func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
            (call $rec (i32.const 100)) (call $rec (local.get 2)) (i32.const 0))"#);
    let mut h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    assert_eq!(h.request_headers(&[(":path", "/")], true)?, Action::Pause);
    let lr = h.local_response().cloned().expect("a local response");
    assert_eq!(lr.status, 403);
    assert_eq!(lr.details, "denied_by_policy");
    assert_eq!(lr.body, b"no");
    assert_eq!(lr.grpc_status, None);
    h.expect_response_header(":status", "403")?;
    h.expect_response_header("x-why", "policy")?;
    // on_response_headers ran for the local reply, without end of stream (a body follows).
    assert_eq!(h.histogram("probe"), Some(vec![OK, 100, 0]));
    assert!(h.request_body(b"late", true).is_err(), "the stream is over");
    h.end_stream()?;
    Ok(())
}

fn trapping_guest() -> Guest {
    let mut g = Guest::new();
    let boom = g.s(b"x-boom");
    g.func(VM_START).func(&format!(r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (call $rec (i32.const 1))
            (if (i32.eqz (call $get_header (i32.const 0) {boom} (i32.const {RET}) (i32.const {RET2})))
              (then unreachable))
            (i32.const 0))"#))
}

#[test]
fn fail_closed_answers_503_now_and_later() -> Result<()> {
    let mut h = Harness::from_compiled(&trapping_guest().compile(wasm::host())).start()?;
    assert_eq!(h.request_headers(&[("x-boom", "1")], true)?, Action::Pause);
    assert_eq!(h.local_response().map(|l| l.status), Some(503));
    assert_eq!(h.traps().len(), 1);
    assert!(
        h.traps()[0].starts_with("proxy_on_request_headers"),
        "{:?}",
        h.traps()
    );
    h.end_stream()?;
    assert_eq!(
        h.request_headers(&[(":path", "/fine")], true)?,
        Action::Pause,
        "the stream is already answered"
    );
    assert_eq!(h.local_response().map(|l| l.status), Some(503));
    assert_eq!(
        h.histogram("probe"),
        Some(vec![1]),
        "the plugin is not called again"
    );
    Ok(())
}

#[test]
fn fail_open_skips_the_plugin() -> Result<()> {
    let mut h = Harness::from_compiled(&trapping_guest().compile(wasm::host()))
        .with_policy(FailurePolicy::FailOpen)
        .start()?;
    assert_eq!(
        h.request_headers(&[("x-boom", "1")], true)?,
        Action::Continue
    );
    assert!(h.local_response().is_none());
    h.end_stream()?;
    assert_eq!(
        h.request_headers(&[(":path", "/")], true)?,
        Action::Continue
    );
    assert_eq!(h.histogram("probe"), Some(vec![1]));
    Ok(())
}

#[test]
fn reload_starts_a_fresh_instance_after_the_backoff() -> Result<()> {
    let mut h = Harness::from_compiled(&trapping_guest().compile(wasm::host()))
        .with_policy(FailurePolicy::Reload)
        .start()?;
    h.request_headers(&[("x-boom", "1")], true)?;
    assert_eq!(h.local_response().map(|l| l.status), Some(503));
    h.end_stream()?;
    // Within the backoff: still failed closed.
    assert_eq!(h.request_headers(&[(":path", "/")], true)?, Action::Pause);
    assert_eq!(h.local_response().map(|l| l.status), Some(503));
    assert_eq!(h.reloads(), 0);
    h.end_stream()?;
    h.tick(Duration::from_secs(1))?;
    assert_eq!(
        h.request_headers(&[(":path", "/")], true)?,
        Action::Continue
    );
    assert!(h.local_response().is_none());
    assert_eq!(h.reloads(), 1);
    // The new instance has its own probe histogram; shared metrics persist: two samples.
    assert_eq!(h.histogram("probe"), Some(vec![1, 1]));
    Ok(())
}

#[test]
fn a_callback_past_its_deadline_is_stopped() -> Result<()> {
    let host = Host::new(HostConfig {
        callback_deadline: Duration::from_millis(50),
        ..HostConfig::default()
    })?;
    let g = Guest::new().func(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (loop $forever (br $forever)) (i32.const 0))"#,
    );
    let mut h = Harness::from_compiled(&g.compile(&host)).start()?;
    let started = std::time::Instant::now();
    assert_eq!(h.request_headers(&[(":path", "/")], true)?, Action::Pause);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(h.traps()[0].contains("deadline"), "{:?}", h.traps());
    assert_eq!(h.local_response().map(|l| l.status), Some(503));
    Ok(())
}

#[test]
fn memory_growth_stops_at_the_cap() -> Result<()> {
    let host = Host::new(HostConfig {
        memory_limit: 1 << 20,
        ..HostConfig::default()
    })?;
    // 4 pages to start; the cap is 16 pages (1 MiB).
    let g = Guest::new().func(VM_START).func(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $rec (memory.grow (i32.const 8)))
        (call $rec (memory.grow (i32.const 100)))
        (i32.const 0))"#,
    );
    let mut h = Harness::from_compiled(&g.compile(&host)).start()?;
    h.request_headers(&[(":path", "/")], true)?;
    assert_eq!(h.histogram("probe"), Some(vec![4, u64::from(u32::MAX)]));
    Ok(())
}

#[test]
fn on_done_false_waits_for_proxy_done() -> Result<()> {
    let g = Guest::new()
        .func(VM_START)
        .func(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (i32.store (i32.const 300) (local.get 0)) (i32.const 0))"#,
        )
        .func(
            r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
            (drop (call $set_tick (i32.const 100))) (i32.const 1))"#,
        )
        .func(r#"(func (export "proxy_on_done") (param i32) (result i32) (i32.const 0))"#)
        .func(
            r#"(func (export "proxy_on_tick") (param i32)
            (call $rec (call $set_effective (i32.load (i32.const 300))))
            (call $rec (call $done))
            (call $rec (call $done)))"#,
        )
        .func(r#"(func (export "proxy_on_log") (param i32) (call $rec (i32.const 77)))"#)
        .func(r#"(func (export "proxy_on_delete") (param i32) (call $rec (i32.const 88)))"#);
    let mut h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    h.request_headers(&[(":path", "/")], true)?;
    h.end_stream()?;
    assert_eq!(h.histogram("probe"), Some(vec![]), "on_log waits");
    h.tick(Duration::from_millis(100))?;
    assert_eq!(h.histogram("probe"), Some(vec![OK, OK, NOT_FOUND, 77, 88]));
    Ok(())
}

#[test]
fn grpc_calls_streams_and_their_responses() -> Result<()> {
    let mut g = Guest::new();
    let cluster = g.s(b"grpc-backend");
    let unknown = g.s(b"nowhere");
    let service = g.s(b"pkg.Svc");
    let method = g.s(b"Do");
    let md = g.map(&[("x-md", "1")]);
    let msg = g.s(b"req");
    let g = g
        .func(VM_START)
        .func(&format!(r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (call $rec (call $grpc_call {unknown} {service} {method} {md} {msg} (i32.const 100) (i32.const {RET})))
            (call $rec (call $grpc_call {cluster} {service} {method} {md} {msg} (i32.const 100) (i32.const {RET})))
            (call $rec (call $grpc_stream {cluster} {service} {method} {md} (i32.const {RET2})))
            (call $rec (call $grpc_send (i32.load (i32.const {RET2})) {msg} (i32.const 1)))
            (call $rec (call $grpc_send (i32.load (i32.const {RET2})) {msg} (i32.const 0)))
            (call $rec (call $grpc_send (i32.load (i32.const {RET})) {msg} (i32.const 0)))
            (call $rec (call $grpc_cancel (i32.load (i32.const {RET2}))))
            (call $rec (call $grpc_cancel (i32.load (i32.const {RET2}))))
            (call $rec (call $grpc_close (i32.const 999)))
            (i32.const 0))"#))
        .func(&format!(r#"(func (export "proxy_on_grpc_receive") (param i32 i32 i32)
            (call $rec (local.get 2))
            (call $rec (call $get_buffer (i32.const 5) (i32.const 0) (i32.const -1) (i32.const {RET}) (i32.const {RET2}))))"#))
        .func(r#"(func (export "proxy_on_grpc_receive_initial_metadata") (param i32 i32 i32)
            (call $rec (i32.add (i32.const 1000) (local.get 2))))"#)
        .func(r#"(func (export "proxy_on_grpc_receive_trailing_metadata") (param i32 i32 i32)
            (call $rec (i32.add (i32.const 2000) (local.get 2))))"#)
        .func(&format!(r#"(func (export "proxy_on_grpc_close") (param i32 i32 i32)
            (call $rec (local.get 2))
            (call $rec (call $get_status (i32.const {RET3}) (i32.const {RET}) (i32.const {RET2})))
            (call $rec (i32.load (i32.const {RET2}))))"#));
    let mut h = Harness::from_compiled(&g.compile(wasm::host()))
        .with_clusters(&["grpc-backend"])
        .start()?;
    h.request_headers(&[(":path", "/")], true)?;
    assert_eq!(
        h.histogram("probe"),
        Some(vec![
            PARSE_FAILURE,
            OK,
            OK,
            OK,
            BAD_ARGUMENT,
            BAD_ARGUMENT,
            OK,
            NOT_FOUND,
            NOT_FOUND
        ])
    );
    let calls = h.grpc_calls().to_vec();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].service.as_str(), calls[0].method.as_str()),
        ("pkg.Svc", "Do")
    );
    assert_eq!(calls[0].messages, vec![b"req".to_vec()]);
    assert!(calls[1].streaming && calls[1].local_closed && calls[1].finished);
    use shadowplane_host_runner::{GrpcEvent, HeaderMap};
    h.respond_grpc(
        calls[0].token,
        vec![
            GrpcEvent::InitialMetadata(HeaderMap::from_pairs(&[("a", "1"), ("b", "2")])),
            GrpcEvent::Message(b"reply!".to_vec()),
            GrpcEvent::TrailingMetadata(HeaderMap::from_pairs(&[("t", "1")])),
            GrpcEvent::Close {
                status: 5,
                message: "not found".into(),
            },
        ],
    )?;
    let got = h.histogram("probe").unwrap_or_default();
    assert_eq!(&got[9..], &[1002, 6, OK, 2001, 5, OK, 9]);
    assert!(
        h.respond_grpc(calls[1].token, vec![]).is_err(),
        "a cancelled stream takes no reply"
    );
    Ok(())
}

#[test]
fn foreign_function_callbacks_read_their_arguments() -> Result<()> {
    let g = Guest::new().func(VM_START).func(&format!(r#"(func (export "proxy_on_foreign_function") (param i32 i32 i32)
        (call $rec (local.get 1))
        (call $rec (local.get 2))
        (call $rec (call $get_buffer (i32.const 8) (i32.const 1) (i32.const 2) (i32.const {RET}) (i32.const {RET2})))
        (call $rec (i32.load (i32.const {RET2}))))"#));
    let mut h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    h.call_foreign(7, b"hello")?;
    assert_eq!(h.histogram("probe"), Some(vec![7, 5, OK, 2]));
    Ok(())
}

#[test]
fn abi_0_1_0_modules_load_and_get_two_argument_header_callbacks() -> Result<()> {
    let g = Guest::new()
        .abi("proxy_abi_version_0_1_0")
        .func(VM_START)
        .func(
            r#"(func (export "proxy_on_request_headers") (param i32 i32) (result i32)
            (call $rec (local.get 1)) (i32.const 0))"#,
        );
    let compiled = g.compile(wasm::host());
    assert_eq!(compiled.abi(), AbiVersion::V0_1_0);
    let mut h = Harness::from_compiled(&compiled).start()?;
    h.request_headers(&[(":path", "/"), ("a", "b")], true)?;
    assert_eq!(h.histogram("probe"), Some(vec![2]));
    Ok(())
}

#[test]
fn a_module_without_an_abi_marker_is_refused() {
    let wasm = wat::parse_str(r#"(module (memory (export "memory") 1))"#).expect("wat");
    assert!(matches!(
        wasm::host().compile(&wasm),
        Err(shadowplane_host_runner::Error::UnknownAbi)
    ));
}

#[test]
fn bodies_and_maps_can_be_rewritten_and_streams_reset() -> Result<()> {
    let mut g = Guest::new();
    let prefix = g.s(b"<<");
    let suffix = g.s(b">>");
    let pairs = g.map(&[(":path", "/rewritten"), ("X-New", "1")]);
    let g = g
        .func(VM_START)
        .func(&format!(
            r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (call $rec (call $set_pairs (i32.const 0) {pairs}))
            (call $rec (call $now (i32.const {RET})))
            (drop (call $record_metric (global.get $probe) (i64.load (i32.const {RET}))))
            (i32.const 0))"#
        ))
        .func(&format!(
            r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
            (call $rec (call $buffer_status (i32.const 0) (i32.const {RET}) (i32.const {RET2})))
            (call $rec (i32.load (i32.const {RET})))
            (call $rec (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) {prefix}))
            (call $rec (call $set_buffer (i32.const 0) (i32.const -1) (i32.const 0) {suffix}))
            (call $rec (call $set_buffer (i32.const 0) (i32.const 2) (i32.const 1) {suffix}))
            (call $rec (call $set_buffer (i32.const 6) (i32.const 0) (i32.const 0) {suffix}))
            (i32.const 0))"#
        ))
        .func(
            r#"(func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
            (call $rec (call $close_stream (i32.const 1)))
            (i32.const 0))"#,
        );
    let mut h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    h.request_headers(&[(":path", "/"), ("x-old", "1")], false)?;
    h.expect_request_header(":path", "/rewritten")?;
    h.expect_request_header("x-new", "1")?;
    h.expect_request_header("x-old", None)?;
    h.request_body(b"body", true)?;
    // "<<" prepended, ">>" appended, then byte 2 ('b') replaced by ">>".
    assert_eq!(
        h.stream().map(|s| s.request_forwarded.clone()),
        Some(b"<<>>ody>>".to_vec())
    );
    h.response_headers(&[(":status", "200")], true)?;
    assert_eq!(h.stream().map(|s| s.reset), Some(true));
    assert!(
        h.response_body(b"x", true).is_err(),
        "a reset stream takes no more events"
    );
    let start_ns = shadowplane_host_runner::InstanceSettings::default()
        .clock
        .now_ns();
    assert_eq!(
        h.histogram("probe"),
        Some(vec![OK, OK, start_ns, OK, 4, OK, OK, OK, BAD_ARGUMENT, OK])
    );
    Ok(())
}

/// A seeded stream of random calls with random arguments at the ABI surface: whatever the
/// arguments, each call returns a status the spec defines and the host never traps or panics.
#[test]
fn random_calls_at_the_abi_surface_only_return_spec_statuses() -> Result<()> {
    for seed in [
        0x9e37_79b9_7f4a_7c15u64,
        1,
        2,
        3,
        0xdead_beef,
        42,
        7,
        0x1234_5678_9abc,
    ] {
        random_calls(seed)?;
    }
    Ok(())
}

fn random_calls(seed: u64) -> Result<()> {
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let arg = |r: u64| -> i64 {
        match r % 6 {
            0 => 0,
            1 => (r >> 8) as i64 % 300_000,
            2 => -1,
            3 => (r >> 8) as i64 % 16,
            4 => 262_140,
            _ => (r >> 32) as i32 as i64,
        }
    };
    // name, i32 argument count; the return pointers are random too.
    let funcs: &[(&str, usize)] = &[
        ("$log", 3),
        ("$get_log_level", 1),
        ("$now", 1),
        ("$map_size", 2),
        ("$get_pairs", 3),
        ("$set_pairs", 3),
        ("$get_header", 5),
        ("$add_header", 5),
        ("$replace_header", 5),
        ("$remove_header", 3),
        ("$get_buffer", 5),
        ("$set_buffer", 5),
        ("$buffer_status", 3),
        ("$get_property", 4),
        ("$set_property", 4),
        ("$http_call", 10),
        ("$grpc_call", 12),
        ("$grpc_stream", 9),
        ("$grpc_send", 4),
        ("$grpc_cancel", 1),
        ("$grpc_close", 1),
        ("$get_status", 3),
        ("$define_metric", 4),
        ("$get_metric", 2),
        ("$get_shared", 5),
        ("$set_shared", 5),
        ("$register_queue", 3),
        ("$resolve_queue", 5),
        ("$enqueue", 3),
        ("$dequeue", 3),
        ("$continue_stream", 1),
        ("$close_stream", 1),
        ("$send_local_response", 8),
        ("$set_effective", 1),
        ("$done", 0),
        ("$foreign", 6),
    ];
    let g = probe(|_| {
        (0..400)
            .map(|_| {
                let (f, n) = funcs[(next() % funcs.len() as u64) as usize];
                let args: String = (0..n)
                    .map(|_| format!(" (i32.const {})", arg(next()) as i32))
                    .collect();
                format!("(call {f}{args})")
            })
            .collect()
    });
    let (h, got) = run_probe(&g)?;
    assert_eq!(got.len(), 400);
    let spec = [0, 1, 2, 3, 4, 6, 7, 8, 10, 12];
    for s in &got {
        assert!(spec.contains(s), "status {s} is not in the spec");
    }
    assert!(
        got.contains(&OOB) && got.contains(&OK),
        "the arguments reach both outcomes"
    );
    assert!(h.traps().is_empty(), "{:?}", h.traps());
    Ok(())
}

#[test]
fn proc_exit_is_a_trap_under_the_failure_policy() -> Result<()> {
    let g = Guest::new().func(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $proc_exit (i32.const 3)) (i32.const 0))"#,
    );
    let mut h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    assert_eq!(h.request_headers(&[(":path", "/")], true)?, Action::Pause);
    assert!(h.traps()[0].contains("proc_exit(3)"), "{:?}", h.traps());
    assert_eq!(h.local_response().map(|l| l.status), Some(503));
    Ok(())
}

#[test]
fn start_is_called_when_initialize_is_absent() -> Result<()> {
    let g = Guest::new()
        .func(r#"(func (export "_start") (global.set $heap (i32.const 140000)))"#)
        .func(
            r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32)
            (call $define_probe) (call $rec (global.get $heap)) (i32.const 1))"#,
        );
    let h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    assert_eq!(h.histogram("probe"), Some(vec![140000]));
    Ok(())
}

#[test]
fn l4_connections_get_data_callbacks_buffering_and_close() -> Result<()> {
    let mut g = Guest::new();
    let hello = g.s(b"> ");
    let g = g
        .func(VM_START)
        .func(r#"(func (export "proxy_on_new_connection") (param i32) (result i32)
            (call $rec (i32.const 100)) (i32.const 0))"#)
        .func(&format!(r#"(func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
            (call $rec (local.get 1))
            (if (result i32) (local.get 2)
              (then
                (call $rec (call $set_buffer (i32.const 2) (i32.const 0) (i32.const 0) {hello}))
                (i32.const 0))
              (else (i32.const 1))))"#))
        .func(&format!(r#"(func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32)
            (call $rec (call $get_buffer (i32.const 3) (i32.const 0) (i32.const -1) (i32.const {RET}) (i32.const {RET2})))
            (call $rec (i32.load (i32.const {RET2})))
            (call $rec (call $close_stream (i32.const 3)))
            (i32.const 0))"#))
        .func(r#"(func (export "proxy_on_downstream_connection_close") (param i32 i32)
            (call $rec (i32.add (i32.const 200) (local.get 1))))"#)
        .func(r#"(func (export "proxy_on_upstream_connection_close") (param i32 i32)
            (call $rec (i32.add (i32.const 300) (local.get 1))))"#);
    let mut h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    assert_eq!(h.new_connection()?, Action::Continue);
    // Paused until end of stream: the host holds the bytes and reports the growing size.
    assert_eq!(h.downstream_data(b"ab", false)?, Action::Pause);
    assert_eq!(h.downstream_data(b"cd", true)?, Action::Continue);
    assert_eq!(
        h.stream().map(|s| s.downstream_forwarded.clone()),
        Some(b"> abcd".to_vec())
    );
    assert_eq!(h.upstream_data(b"xyz", false)?, Action::Continue);
    assert_eq!(h.stream().map(|s| s.upstream_closed), Some(true));
    assert!(
        h.upstream_data(b"more", false).is_err(),
        "a closed connection takes no data"
    );
    h.connection_closed(true, 2)?;
    h.connection_closed(false, 1)?;
    h.end_stream()?;
    assert_eq!(
        h.histogram("probe"),
        Some(vec![100, 2, 4, OK, OK, 3, OK, 202, 301])
    );
    Ok(())
}

#[test]
fn malloc_is_the_allocator_when_proxy_on_memory_allocate_is_absent() -> Result<()> {
    let mut g = Guest::new().alloc_export("malloc");
    let path = g.s(b":path");
    let echo = g.s(b"x-echo");
    let g = g.func(VM_START).func(&format!(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (call $rec (call $get_header (i32.const 0) {path} (i32.const {RET}) (i32.const {RET2})))
            (call $rec (i32.load (i32.const {RET})))
            (call $rec (call $add_header (i32.const 0) {echo} (i32.load (i32.const {RET})) (i32.load (i32.const {RET2}))))
            (i32.const 0))"#
    ));
    let mut h = Harness::from_compiled(&g.compile(wasm::host())).start()?;
    h.request_headers(&[(":path", "/via-malloc")], true)?;
    // The value was placed where malloc's bump pointer starts (131072).
    assert_eq!(h.histogram("probe"), Some(vec![OK, 131_072, OK]));
    h.expect_request_header("x-echo", "/via-malloc")?;
    Ok(())
}

#[test]
fn sched_yield_and_clock_res_get_answer_wasi_errnos() -> Result<()> {
    let g = probe(|_| {
        vec![
            "(call $sched_yield)".to_string(),
            format!("(call $clock_res_get (i32.const 0) (i32.const {RET}))"),
            format!("(i32.wrap_i64 (i64.load (i32.const {RET})))"),
            format!("(call $clock_res_get (i32.const 1) (i32.const {RET}))"),
            format!("(call $clock_res_get (i32.const 9) (i32.const {RET}))"),
            "(call $clock_res_get (i32.const 0) (i32.const -4))".to_string(),
        ]
    });
    let (h, got) = run_probe(&g)?;
    // SUCCESS 0, a resolution of 1 ns, INVAL 28 for an unknown clock, FAULT 21 out of bounds.
    assert_eq!(got, vec![0, 0, 1, 0, 28, 21]);
    assert!(h.traps().is_empty());
    Ok(())
}
