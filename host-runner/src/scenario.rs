//! YAML scenarios for `host-runner run`: the plugin's configuration, properties, a sequence
//! of requests, ticks and callout answers, and expectations checked along the way.
//!
//! ```yaml
//! plugin:
//!   config: {groups: [{name: blue, weight: 1}]}   # a mapping is sent as JSON, a string as is
//! properties: {node.id: node-7}
//! cluster_header: x-shadowplane-cluster         # route as Envoy's `cluster_header` (xds.cluster_name)
//! steps:
//!   - request:
//!       headers: {":method": GET, ":path": /, ":authority": svc}
//!       expect: {action: continue, request_headers: {x-shadowplane-cluster: blue}}
//!       response:
//!         headers: {":status": "200"}
//!         body: [hello]
//!   - tick_ms: 1000
//!   - expect: {http_calls: [{upstream: collector}], metrics: {shadowplane.reports_sent: 0}}
//!   - respond_http: {call: 1, status: 200}
//!   - connection:                                  # an L4 connection
//!       events: [{downstream: "hi"}, {upstream_end: "bye"}, {close_downstream: remote}]
//!       expect: {downstream_forwarded: "hi", upstream_forwarded: "bye"}
//!   - call_foreign: {function_id: 1, args: ping}   # proxy_on_foreign_function
//!   - configure: {config: {groups: []}, accepted: false}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::abi::Action;
use crate::error::{Error, Result};
use crate::harness::{FailurePolicy, Harness, TraceEvent};
use crate::host::Compiled;
use crate::plugin::GrpcEvent;
use crate::state::HeaderMap;

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The plugin's configuration. Default: empty.
    #[serde(default)]
    pub plugin: PluginSection,
    /// Clusters callouts may target. Default: any.
    #[serde(default)]
    pub clusters: Option<Vec<String>>,
    /// Route each stream to the cluster this request header names, as an Envoy route with
    /// `cluster_header` does (`xds.cluster_name`). Default: streams have no cluster.
    #[serde(default)]
    pub cluster_header: Option<String>,
    /// Properties by dotted path (`node.id`), as strings. Default: none.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Foreign functions the plugin may call with `proxy_call_foreign_function`, by name: each
    /// answers its reply, whatever the arguments. Default: none.
    #[serde(default)]
    pub foreign_functions: BTreeMap<String, String>,
    /// What happens, in order. Required.
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub steps: Vec<Step>,
}

/// The plugin section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// Plugin configuration: a string is passed as is, anything else as JSON. Default: empty.
    #[serde(default)]
    pub config: Option<Value>,
    /// VM configuration, the same way. Default: empty.
    #[serde(default)]
    pub vm_config: Option<Value>,
    /// `plugin_name`. Default: `plugin`.
    #[serde(default)]
    pub name: Option<String>,
    /// `plugin_root_id`. Default: empty.
    #[serde(default)]
    pub root_id: Option<String>,
    /// What a trap does. Default: `fail_closed`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
}

/// One step.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// A whole HTTP exchange on a new stream.
    Request(Box<Exchange>),
    /// Advance the clock by this many milliseconds.
    TickMs(u64),
    /// Answer the N-th HTTP callout (1-based, in dispatch order).
    RespondHttp(HttpReply),
    /// Fail the N-th HTTP callout (as a reset).
    FailHttp(CalloutRef),
    /// Answer the N-th gRPC call or stream (1-based, in opening order).
    RespondGrpc(GrpcReply),
    /// A whole L4 connection on a new stream context: `proxy_on_new_connection`, then its
    /// events in order.
    Connection(Box<Connection>),
    /// Calls the plugin's `proxy_on_foreign_function`.
    CallForeign(ForeignCall),
    /// Sends a new plugin configuration: `proxy_on_configure` runs again.
    Configure(Reconfigure),
    /// Check expectations now.
    Expect(Box<Expect>),
}

/// A request, its response, and what to expect of each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// Request headers, in order. Required.
    pub headers: Value,
    /// Request body chunks. Default: none.
    #[serde(default)]
    pub body: Vec<String>,
    /// Request trailers. Default: none.
    #[serde(default)]
    pub trailers: Option<Value>,
    /// Checked after the request side.
    #[serde(default)]
    pub expect: Option<Expect>,
    /// The response, if the stream gets that far. Default: none.
    #[serde(default)]
    pub response: Option<Response>,
}

/// The response side of an exchange.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Response headers, `:status` included. Required.
    pub headers: Value,
    /// Body chunks. Default: none.
    #[serde(default)]
    pub body: Vec<String>,
    /// Trailers. Default: none.
    #[serde(default)]
    pub trailers: Option<Value>,
    /// Checked after the response side.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// An L4 connection and what to expect of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// What happens on the connection, in order. Default: nothing after the connection opens.
    #[serde(default)]
    pub events: Vec<ConnectionEvent>,
    /// Checked after the last event, before the context is done.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// One event on an L4 connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConnectionEvent {
    /// Bytes from downstream.
    Downstream(String),
    /// The last bytes from downstream (end of stream).
    DownstreamEnd(String),
    /// Bytes from upstream.
    Upstream(String),
    /// The last bytes from upstream (end of stream).
    UpstreamEnd(String),
    /// The downstream connection closes; the value names who closed it.
    CloseDownstream(Peer),
    /// The upstream connection closes.
    CloseUpstream(Peer),
}

/// Who closed a connection, as the spec's `proxy_peer_type_t`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// 0.
    Unknown = 0,
    /// 1: this side.
    Local = 1,
    /// 2: the other side.
    Remote = 2,
}

/// A call of the plugin's `proxy_on_foreign_function`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignCall {
    /// The function id passed to the plugin. Required.
    pub function_id: u32,
    /// The arguments, readable as the foreign-function-arguments buffer. Default: empty.
    #[serde(default)]
    pub args: String,
}

/// A new plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconfigure {
    /// The configuration: a string as is, anything else as JSON. Default: empty.
    #[serde(default)]
    pub config: Option<Value>,
    /// Whether `proxy_on_configure` must accept it. Default: true.
    #[serde(default = "yes")]
    pub accepted: bool,
}

fn yes() -> bool {
    true
}

/// Which callout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalloutRef {
    /// 1-based dispatch index.
    pub call: usize,
}

/// An answer to an HTTP callout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpReply {
    /// 1-based dispatch index. Required.
    pub call: usize,
    /// HTTP status. Default: 200.
    #[serde(default = "ok_status")]
    pub status: u16,
    /// Response headers. Default: none.
    #[serde(default)]
    pub headers: Option<Value>,
    /// Body. Default: empty.
    #[serde(default)]
    pub body: String,
}

fn ok_status() -> u16 {
    200
}

/// An answer to a gRPC callout, delivered in this order: initial metadata, messages,
/// trailing metadata, close.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcReply {
    /// 1-based opening index. Required.
    pub call: usize,
    /// Initial metadata. Default: not sent.
    #[serde(default)]
    pub initial_metadata: Option<Value>,
    /// Response messages. Default: none.
    #[serde(default)]
    pub messages: Vec<String>,
    /// Trailing metadata. Default: not sent.
    #[serde(default)]
    pub trailing_metadata: Option<Value>,
    /// gRPC status of the close; `null` leaves the call open. Default: 0.
    #[serde(default, deserialize_with = "some")]
    pub status: Option<Option<u32>>,
    /// Status message. Default: empty.
    #[serde(default)]
    pub message: String,
}

/// Expectations; each given field is checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The action of the last headers callback: `continue` or `pause`.
    #[serde(default)]
    pub action: Option<Action>,
    /// Request header values (`null`: absent).
    #[serde(default)]
    pub request_headers: BTreeMap<String, Option<String>>,
    /// Response header values (`null`: absent).
    #[serde(default)]
    pub response_headers: BTreeMap<String, Option<String>>,
    /// The local response status (`null`: none).
    #[serde(default, deserialize_with = "some")]
    pub local_response: Option<Option<u32>>,
    /// Counter or gauge values.
    #[serde(default)]
    pub metrics: BTreeMap<String, i64>,
    /// Histogram sample counts.
    #[serde(default)]
    pub histogram_counts: BTreeMap<String, usize>,
    /// Substrings that some log line contains.
    #[serde(default)]
    pub logs: Vec<String>,
    /// HTTP callouts dispatched so far (exactly this many, each matching).
    #[serde(default)]
    pub http_calls: Option<Vec<CallMatch>>,
    /// gRPC calls and streams opened so far.
    #[serde(default)]
    pub grpc_calls: Option<usize>,
    /// Shared data values.
    #[serde(default)]
    pub shared_data: BTreeMap<String, String>,
    /// L4: every byte the plugin let through from downstream so far, on this connection.
    #[serde(default)]
    pub downstream_forwarded: Option<String>,
    /// L4: every byte the plugin let through from upstream so far.
    #[serde(default)]
    pub upstream_forwarded: Option<String>,
    /// No trap so far. Default: not checked.
    #[serde(default)]
    pub no_traps: bool,
}

fn some<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// What an HTTP callout must look like.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallMatch {
    /// Cluster.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Header values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whether the body is non-empty.
    #[serde(default)]
    pub has_body: Option<bool>,
}

impl Scenario {
    /// Parses a scenario; errors name `origin` and the line.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        serde_yaml_ng::from_str(text).map_err(|e| Error::Invalid(format!("{origin}: {e}")))
    }

    /// Runs the scenario on a fresh instance of `compiled`.
    pub fn run(&self, compiled: &Compiled) -> Result<Outcome> {
        let mut h = Harness::from_compiled(compiled)
            .with_policy(self.plugin.failure_policy)
            .with_settings(|s| {
                if let Some(n) = &self.plugin.name {
                    s.plugin_name = n.clone();
                }
                if let Some(r) = &self.plugin.root_id {
                    s.root_id = r.clone();
                }
                for (k, v) in &self.properties {
                    let path: Vec<&str> = k.split('.').collect();
                    s.properties.set(&path, v.as_bytes());
                }
                s.vm_config = config_bytes(self.plugin.vm_config.as_ref());
                s.cluster_header = self.cluster_header.clone();
            });
        for (name, reply) in &self.foreign_functions {
            let reply = reply.clone().into_bytes();
            h = h.with_foreign(name, std::sync::Arc::new(move |_: &[u8]| reply.clone()));
        }
        if let Some(c) = &self.clusters {
            let c: Vec<&str> = c.iter().map(String::as_str).collect();
            h = h.with_clusters(&c);
        }
        let mut h = h.configure(config_bytes(self.plugin.config.as_ref()))?;
        let mut run = Run {
            failures: Vec::new(),
            checks: 0,
            last_action: None,
        };
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            if let Err(e) = run.step(&mut h, n, step) {
                run.fail(&mut h, format!("step {n}: {e}"));
            }
        }
        Ok(Outcome {
            failures: run.failures,
            checks: run.checks,
            trace: h.trace().to_vec(),
            http_calls: h.http_calls().to_vec(),
            metrics: h.shared().metrics(),
            hostcalls: h.hostcalls(),
        })
    }
}

fn config_bytes(v: Option<&Value>) -> Vec<u8> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => serde_json::to_vec(other).unwrap_or_default(),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Headers from a mapping (in file order) or a list of `[name, value]` pairs.
fn pairs(v: Option<&Value>) -> Result<Vec<(String, String)>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Mapping(m)) => Ok(m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect()),
        Some(Value::Sequence(s)) => s
            .iter()
            .map(|p| match p {
                Value::Sequence(kv) if kv.len() == 2 => Ok((scalar(&kv[0]), scalar(&kv[1]))),
                _ => Err(Error::Invalid(
                    "a header list holds [name, value] pairs".into(),
                )),
            })
            .collect(),
        Some(_) => Err(Error::Invalid(
            "headers are a mapping or a list of [name, value] pairs".into(),
        )),
    }
}

fn refs(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The result of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// Expectations that did not hold (and steps that could not run).
    pub failures: Vec<String>,
    /// Expectations checked.
    pub checks: usize,
    /// What happened.
    pub trace: Vec<TraceEvent>,
    /// HTTP callouts made.
    pub http_calls: Vec<crate::state::HttpCall>,
    /// Metrics at the end.
    pub metrics: Vec<crate::state::Metric>,
    /// Calls to each host function over the run (of the last instance, after a reload).
    pub hostcalls: BTreeMap<&'static str, u64>,
}

impl Outcome {
    /// True when every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The trace as text, one event a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.trace {
            out.push_str(&format!("[{:>6} ms] {}\n", e.at_ms, e.text));
        }
        out.push_str(&format!(
            "{} of {} expectations held\n",
            self.checks - self.failures.len().min(self.checks),
            self.checks
        ));
        for f in &self.failures {
            out.push_str(&format!("FAILED {f}\n"));
        }
        out
    }
}

struct Run {
    failures: Vec<String>,
    checks: usize,
    last_action: Option<Action>,
}

impl Run {
    fn fail(&mut self, h: &mut Harness, msg: String) {
        h.note(format!("FAILED {msg}"));
        self.failures.push(msg);
    }

    fn step(&mut self, h: &mut Harness, n: usize, step: &Step) -> Result<()> {
        match step {
            Step::Request(x) => self.exchange(h, n, x),
            Step::TickMs(ms) => h.tick(Duration::from_millis(*ms)),
            Step::RespondHttp(r) => {
                let token = callout(h, r.call)?;
                let headers = pairs(r.headers.as_ref())?;
                h.respond_http(token, r.status, &refs(&headers), r.body.as_bytes())
            }
            Step::FailHttp(c) => {
                let token = callout(h, c.call)?;
                h.fail_http(token)
            }
            Step::RespondGrpc(r) => {
                let token = r
                    .call
                    .checked_sub(1)
                    .and_then(|i| h.grpc_calls().get(i))
                    .map(|c| c.token)
                    .ok_or_else(|| {
                        Error::Invalid(format!("there is no grpc callout number {}", r.call))
                    })?;
                let mut events = Vec::new();
                if let Some(m) = &r.initial_metadata {
                    events.push(GrpcEvent::InitialMetadata(HeaderMap::from_pairs(&pairs(
                        Some(m),
                    )?)));
                }
                for m in &r.messages {
                    events.push(GrpcEvent::Message(m.clone().into_bytes()));
                }
                if let Some(m) = &r.trailing_metadata {
                    events.push(GrpcEvent::TrailingMetadata(HeaderMap::from_pairs(&pairs(
                        Some(m),
                    )?)));
                }
                if let Some(status) = r.status.unwrap_or(Some(0)) {
                    events.push(GrpcEvent::Close {
                        status,
                        message: r.message.clone(),
                    });
                }
                h.respond_grpc(token, events)
            }
            Step::Expect(e) => {
                self.check(h, &format!("step {n}"), e);
                Ok(())
            }
            Step::Connection(c) => self.connection(h, n, c),
            Step::CallForeign(f) => h.call_foreign(f.function_id, f.args.as_bytes()),
            Step::Configure(r) => {
                let got = match h.reconfigure(config_bytes(r.config.as_ref())) {
                    Ok(()) => true,
                    Err(Error::Rejected { .. }) => false,
                    Err(e) => return Err(e),
                };
                let want = r.accepted;
                self.checks += 1;
                let what = format!("step {n}: configuration accepted: {want} (got {got})");
                if got == want {
                    h.note(format!("  ok {what}"));
                } else {
                    self.fail(h, what);
                }
                Ok(())
            }
        }
    }

    fn connection(&mut self, h: &mut Harness, n: usize, c: &Connection) -> Result<()> {
        self.last_action = Some(h.new_connection()?);
        for e in &c.events {
            match e {
                ConnectionEvent::Downstream(d) => {
                    self.last_action = Some(h.downstream_data(d.as_bytes(), false)?);
                }
                ConnectionEvent::DownstreamEnd(d) => {
                    self.last_action = Some(h.downstream_data(d.as_bytes(), true)?);
                }
                ConnectionEvent::Upstream(d) => {
                    self.last_action = Some(h.upstream_data(d.as_bytes(), false)?);
                }
                ConnectionEvent::UpstreamEnd(d) => {
                    self.last_action = Some(h.upstream_data(d.as_bytes(), true)?);
                }
                ConnectionEvent::CloseDownstream(p) => h.connection_closed(true, *p as u32)?,
                ConnectionEvent::CloseUpstream(p) => h.connection_closed(false, *p as u32)?,
            }
        }
        if let Some(e) = &c.expect {
            self.check(h, &format!("step {n} connection"), e);
        }
        h.end_stream()
    }

    fn exchange(&mut self, h: &mut Harness, n: usize, x: &Exchange) -> Result<()> {
        h.new_stream()?;
        let headers = pairs(Some(&x.headers))?;
        let trailers = pairs(x.trailers.as_ref())?;
        let ended = |h: &Harness| h.local_response().is_some();
        let eos = x.body.is_empty() && trailers.is_empty();
        if !ended(h) {
            self.last_action = Some(h.request_headers(&refs(&headers), eos)?);
        }
        for (i, chunk) in x.body.iter().enumerate() {
            if ended(h) {
                break;
            }
            let last = i + 1 == x.body.len() && trailers.is_empty();
            h.request_body(chunk.as_bytes(), last)?;
        }
        if !trailers.is_empty() && !ended(h) {
            h.request_trailers(&refs(&trailers))?;
        }
        if let Some(e) = &x.expect {
            self.check(h, &format!("step {n} request"), e);
        }
        if let Some(r) = &x.response {
            if ended(h) {
                h.note("  response skipped: the stream was answered locally".into());
            } else {
                let headers = pairs(Some(&r.headers))?;
                let trailers = pairs(r.trailers.as_ref())?;
                let eos = r.body.is_empty() && trailers.is_empty();
                self.last_action = Some(h.response_headers(&refs(&headers), eos)?);
                for (i, chunk) in r.body.iter().enumerate() {
                    let last = i + 1 == r.body.len() && trailers.is_empty();
                    h.response_body(chunk.as_bytes(), last)?;
                }
                if !trailers.is_empty() {
                    h.response_trailers(&refs(&trailers))?;
                }
            }
            if let Some(e) = &r.expect {
                self.check(h, &format!("step {n} response"), e);
            }
        }
        h.end_stream()
    }

    fn check(&mut self, h: &mut Harness, at: &str, e: &Expect) {
        let mut results: Vec<(String, bool)> = Vec::new();
        if let Some(want) = e.action {
            let got = self.last_action;
            results.push((format!("action {want:?} (got {got:?})"), got == Some(want)));
        }
        for (k, want) in &e.request_headers {
            let got = h.request_header(k);
            results.push((
                format!("request header {k} = {want:?} (got {got:?})"),
                got == *want,
            ));
        }
        for (k, want) in &e.response_headers {
            let got = h.response_header(k);
            results.push((
                format!("response header {k} = {want:?} (got {got:?})"),
                got == *want,
            ));
        }
        if let Some(want) = e.local_response {
            let got = h.local_response().map(|l| l.status);
            results.push((
                format!("local response {want:?} (got {got:?})"),
                got == want,
            ));
        }
        for (k, want) in &e.metrics {
            let got = h.metric(k);
            results.push((
                format!("metric {k} = {want} (got {got:?})"),
                got == Some(*want),
            ));
        }
        for (k, want) in &e.histogram_counts {
            let got = h.histogram(k).map(|s| s.len());
            results.push((
                format!("histogram {k} has {want} samples (got {got:?})"),
                got == Some(*want),
            ));
        }
        for text in &e.logs {
            let ok = h.logs().iter().any(|l| l.message.contains(text.as_str()));
            results.push((format!("a log line contains {text:?}"), ok));
        }
        if let Some(calls) = &e.http_calls {
            let got = h.http_calls().to_vec();
            results.push((
                format!("{} http callouts (got {})", calls.len(), got.len()),
                got.len() == calls.len(),
            ));
            for (i, (m, c)) in calls.iter().zip(&got).enumerate() {
                if let Some(u) = &m.upstream {
                    results.push((
                        format!("callout {} to {u} (got {})", i + 1, c.upstream),
                        c.upstream == *u,
                    ));
                }
                for (k, v) in &m.headers {
                    let got = c.header(k);
                    results.push((
                        format!("callout {} header {k} = {v:?} (got {got:?})", i + 1),
                        got == Some(v.as_str()),
                    ));
                }
                if let Some(b) = m.has_body {
                    results.push((
                        format!("callout {} has a body: {b}", i + 1),
                        c.body.is_empty() != b,
                    ));
                }
            }
        }
        if let Some(want) = e.grpc_calls {
            let got = h.grpc_calls().len();
            results.push((format!("{want} grpc callouts (got {got})"), got == want));
        }
        for (k, want) in &e.shared_data {
            let got = h
                .shared()
                .shared_data(k)
                .map(|(v, _)| String::from_utf8_lossy(&v).into_owned());
            results.push((
                format!("shared data {k} = {want:?} (got {got:?})"),
                got.as_deref() == Some(want.as_str()),
            ));
        }
        for (side, want) in [
            ("downstream", &e.downstream_forwarded),
            ("upstream", &e.upstream_forwarded),
        ] {
            let Some(want) = want else { continue };
            let got = h.stream().map(|s| {
                let b = if side == "downstream" {
                    &s.downstream_forwarded
                } else {
                    &s.upstream_forwarded
                };
                String::from_utf8_lossy(b).into_owned()
            });
            results.push((
                format!("{side} forwarded {want:?} (got {got:?})"),
                got.as_deref() == Some(want.as_str()),
            ));
        }
        if e.no_traps {
            let traps = h.traps().to_vec();
            results.push((format!("no traps (got {traps:?})"), traps.is_empty()));
        }
        for (what, ok) in results {
            self.checks += 1;
            if ok {
                h.note(format!("  ok {at}: {what}"));
            } else {
                self.fail(h, format!("{at}: {what}"));
            }
        }
    }
}

fn callout(h: &Harness, index: usize) -> Result<u32> {
    index
        .checked_sub(1)
        .and_then(|i| h.http_calls().get(i))
        .map(|c| c.token)
        .ok_or_else(|| Error::Invalid(format!("there is no http callout number {index}")))
}
