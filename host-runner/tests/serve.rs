//! `host-runner serve` on live traffic: a request through the shadowplane filter to a real
//! upstream on loopback, and the filter's telemetry callout to a real collector; and a TCP
//! connection through a WAT guest's L4 callbacks to an echo server.

#[path = "support/guest.rs"]
mod guest;
#[path = "support/wasm.rs"]
mod wasm;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An HTTP/1.1 server on loopback that answers every request with `response` and sends each
/// request's head and body, as text, to the returned channel.
fn server(response: &'static str) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as much body as content-length says.
            while let Ok(n) = conn.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            let _ = conn.write_all(response.as_bytes());
        }
    });
    (addr, rx)
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(upstream: &str, collector: &str, config: &str) -> (Proxy, String) {
    let wasm = wasm::filter_path();
    spawn(&[
        "--wasm",
        &wasm.display().to_string(),
        "--upstream",
        &format!("http://{upstream}"),
        "--cluster",
        &format!("collector=http://{collector}"),
        "--config",
        config,
        "--cluster-header",
        "x-shadowplane-cluster",
    ])
}

/// `host-runner serve --listen 127.0.0.1:0 ARGS`, and the address it listens on.
fn spawn(args: &[&str]) -> (Proxy, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_host-runner"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("host-runner serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Proxy(child), addr)
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn live_requests_are_routed_and_reported() {
    let (upstream, upstream_rx) =
        server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let (collector, collector_rx) =
        server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let config = r#"{"groups": [{"name": "blue", "weight": 1}], "report_interval_ms": 100,
        "telemetry": {"cluster": "collector", "auth_token": "t0k", "timeout_ms": 2000}}"#;
    let (_proxy, addr) = start(&upstream, &collector, config);
    let response = get(&addr, "/orders?id=1");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("x-shadowplane"),
        "nothing of the filter's reaches the client: {response}"
    );
    let seen = upstream_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream got it");
    assert!(seen.starts_with("GET /orders?id=1 HTTP/1.1"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("x-shadowplane-cluster: blue"),
        "{seen}"
    );
    // The report window is 100 ms: the collector hears from the filter soon.
    let report = collector_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a report");
    assert!(report.starts_with("POST /v1/telemetry"), "{report}");
    assert!(
        report
            .to_ascii_lowercase()
            .contains("authorization: bearer t0k"),
        "{report}"
    );
}

/// A TCP server on loopback that reads each connection to its end, then sends it all back and
/// closes.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut got = Vec::new();
            if conn.read_to_end(&mut got).is_ok() {
                let _ = conn.write_all(&got);
            }
        }
    });
    addr
}

/// Holds each side's bytes until its end of stream, then prepends `> ` (downstream) or `< `
/// (upstream) and lets them through.
fn l4_guest() -> Vec<u8> {
    let mut g = guest::Guest::new();
    let down = g.s(b"> ");
    let up = g.s(b"< ");
    let g = g
        .func(guest::VM_START)
        .func(r#"(func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))"#)
        .func(&format!(
            r#"(func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
            (if (result i32) (local.get 2)
              (then (drop (call $set_buffer (i32.const 2) (i32.const 0) (i32.const 0) {down})) (i32.const 0))
              (else (i32.const 1))))"#
        ))
        .func(&format!(
            r#"(func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32)
            (if (result i32) (local.get 2)
              (then (drop (call $set_buffer (i32.const 3) (i32.const 0) (i32.const 0) {up})) (i32.const 0))
              (else (i32.const 1))))"#
        ));
    wat::parse_str(g.wat()).expect("the guest assembles")
}

#[test]
fn a_tcp_connection_goes_through_the_l4_callbacks() {
    let dir = std::env::temp_dir().join(format!("host-runner-serve-l4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let wasm = dir.join("l4.wasm");
    std::fs::write(&wasm, l4_guest()).expect("write the guest");
    let echo = echo_server();
    let (_proxy, addr) = spawn(&[
        "--wasm",
        &wasm.display().to_string(),
        "--upstream",
        &format!("tcp://{echo}"),
    ]);
    for text in ["hello", "a second connection"] {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        // Two writes: the guest holds the first until the end of stream.
        let (a, b) = text.split_at(2);
        s.write_all(a.as_bytes()).expect("write");
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(b.as_bytes()).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        // Downstream got "> " before it reached the echo server, upstream "< " on the way back.
        assert_eq!(out, format!("< > {text}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
