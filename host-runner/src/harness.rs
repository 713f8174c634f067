//! The driver a test or a scenario holds: one plugin, its streams, a virtual clock, callouts
//! to answer, a failure policy like Envoy's, and a trace of what happened.
//!
//! ```no_run
//! # fn main() -> shadowplane_host_runner::Result<()> {
//! use shadowplane_host_runner::{Action, Harness};
//! let wasm = std::fs::read("filter.wasm").unwrap();
//! let mut h = Harness::new(&wasm)?.configure(r#"{"groups":[{"name":"a","weight":1}]}"#)?;
//! let action = h.request_headers(&[(":path", "/"), (":method", "GET")], true)?;
//! assert_eq!(action, Action::Continue);
//! h.expect_request_header("x-shadowplane-cluster", "a")?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::abi::{Action, LogLevel};
use crate::error::{Error, Result};
use crate::host::{Compiled, Host, HostConfig};
use crate::plugin::{GrpcEvent, Plugin, Side};
use crate::state::{
    CalloutResponse, ForeignFn, GrpcCall, HeaderMap, HttpCall, InstanceSettings, LocalResponse,
    LogEntry, Shared, Stream,
};

/// What the host does when the plugin traps or hits a limit, as Envoy's `failure_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The stream gets a 503 local reply, and so does every later one.
    #[default]
    FailClosed,
    /// The plugin is skipped from then on: streams go on as if it were not there.
    FailOpen,
    /// The stream gets a 503; a later stream starts a fresh instance, with a backoff that
    /// doubles after each failure (1 s, 2 s, ... up to 60 s of the harness clock).
    Reload,
}

/// One line of the trace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TraceEvent {
    /// Milliseconds of harness time since the start.
    pub at_ms: u64,
    /// What happened.
    pub text: String,
}

/// A plugin under test. See the module documentation.
pub struct Harness {
    compiled: Compiled,
    settings: InstanceSettings,
    shared: Shared,
    policy: FailurePolicy,
    plugin: Option<Plugin>,
    broken: Option<String>,
    traps: Vec<String>,
    reloads: u32,
    failures: u32,
    retry_at_ns: u64,
    start_ns: u64,
    now_ns: u64,
    current: Option<u32>,
    last: Option<(u32, Stream)>,
    trace: Vec<TraceEvent>,
    tracing: bool,
    logs_seen: usize,
    http_seen: usize,
    grpc_seen: usize,
}

const FAIL_DETAILS: &str = "wasm_fail_stream";

impl Harness {
    /// Compiles `wasm` on a host of its own with default limits.
    pub fn new(wasm: &[u8]) -> Result<Self> {
        let host = Host::new(HostConfig::default())?;
        Ok(Self::from_compiled(&host.compile(wasm)?))
    }

    /// A harness over an already compiled module (compile once, run many tests).
    pub fn from_compiled(compiled: &Compiled) -> Self {
        let settings = InstanceSettings::default();
        let now = settings.clock.now_ns();
        Self {
            compiled: compiled.clone(),
            settings,
            shared: Shared::new(),
            policy: FailurePolicy::default(),
            plugin: None,
            broken: None,
            traps: Vec::new(),
            reloads: 0,
            failures: 0,
            retry_at_ns: 0,
            start_ns: now,
            now_ns: now,
            current: None,
            last: None,
            trace: Vec::new(),
            tracing: true,
            logs_seen: 0,
            http_seen: 0,
            grpc_seen: 0,
        }
    }

    /// Changes the instance settings before the start.
    pub fn with_settings(mut self, f: impl FnOnce(&mut InstanceSettings)) -> Self {
        f(&mut self.settings);
        self.now_ns = self.settings.clock.now_ns();
        self.start_ns = self.now_ns;
        self
    }

    /// Turns the trace on (the default) or off; off, a request costs no formatting.
    pub fn with_trace(mut self, on: bool) -> Self {
        self.tracing = on;
        self
    }

    /// Seeds a property every context sees.
    pub fn with_property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.settings.properties.set(path, value);
        self
    }

    /// Limits callouts to these clusters (by default any name is accepted).
    pub fn with_clusters(mut self, clusters: &[&str]) -> Self {
        self.settings.clusters = Some(clusters.iter().map(|c| c.to_string()).collect());
        self
    }

    /// Routes each stream to the cluster request header `name` names once the plugin has seen
    /// the request headers, as an Envoy route with `cluster_header: NAME` does: that cluster is
    /// the stream's `xds.cluster_name`.
    pub fn with_cluster_header(mut self, name: &str) -> Self {
        self.settings.cluster_header = Some(name.to_string());
        self
    }

    /// The failure policy.
    pub fn with_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Registers a foreign function for `proxy_call_foreign_function`.
    pub fn with_foreign(mut self, name: &str, f: ForeignFn) -> Self {
        self.settings.foreign.insert(name.to_string(), f);
        self
    }

    /// Shares data, queues and metrics with other harnesses (workers of one plugin).
    pub fn with_shared(mut self, shared: Shared, worker: u32) -> Self {
        self.shared = shared;
        self.settings.worker = worker;
        self
    }

    /// The VM configuration.
    pub fn with_vm_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.settings.vm_config = config.into();
        self
    }

    /// Sets the plugin configuration and starts the plugin.
    pub fn configure(mut self, config: impl Into<Vec<u8>>) -> Result<Self> {
        self.settings.plugin_config = config.into();
        self.start_plugin()?;
        Ok(self)
    }

    /// Starts the plugin with an empty configuration.
    pub fn start(mut self) -> Result<Self> {
        self.start_plugin()?;
        Ok(self)
    }

    fn start_plugin(&mut self) -> Result<()> {
        self.event(|| "start: proxy_on_vm_start, proxy_on_configure".to_string());
        let mut p = Plugin::new(&self.compiled, self.settings.clone(), self.shared.clone())?;
        p.set_now(self.now_ns);
        let r = p.start();
        self.plugin = Some(p);
        self.collect_logs();
        r?;
        self.settle()
    }

    /// Sends a new plugin configuration and runs `proxy_on_configure` again.
    pub fn reconfigure(&mut self, config: impl Into<Vec<u8>>) -> Result<()> {
        let config = config.into();
        self.settings.plugin_config = config.clone();
        let p = self.plugin_mut()?;
        p.set_plugin_config(config);
        let r = p.configure();
        self.collect_logs();
        r
    }

    fn plugin_mut(&mut self) -> Result<&mut Plugin> {
        self.plugin
            .as_mut()
            .ok_or_else(|| Error::Failed("not started".into()))
    }

    fn plugin(&self) -> Result<&Plugin> {
        self.plugin
            .as_ref()
            .ok_or_else(|| Error::Failed("not started".into()))
    }

    fn event(&mut self, text: impl FnOnce() -> String) {
        if !self.tracing {
            return;
        }
        let at_ms = (self.now_ns.saturating_sub(self.start_ns)) / 1_000_000;
        self.trace.push(TraceEvent {
            at_ms,
            text: text(),
        });
    }

    /// Moves what the last guest call logged and dispatched into the trace.
    fn collect_logs(&mut self) {
        let Some(p) = &self.plugin else { return };
        let st = p.state();
        if !self.tracing {
            self.logs_seen = st.logs.len();
            self.http_seen = st.http_calls.len();
            self.grpc_seen = st.grpc_calls.len();
            return;
        }
        let mut lines = Vec::new();
        for l in st.logs.iter().skip(self.logs_seen) {
            lines.push(format!("  log {:?}: {}", l.level, l.message));
        }
        for c in st.http_calls.iter().skip(self.http_seen) {
            let path = c.header(":path").unwrap_or_default();
            lines.push(format!(
                "  http callout {} to {} {path} ({} body bytes, timeout {} ms)",
                c.token,
                c.upstream,
                c.body.len(),
                c.timeout_ms
            ));
        }
        for c in st.grpc_calls.iter().skip(self.grpc_seen) {
            lines.push(format!(
                "  grpc callout {} to {} {}/{}",
                c.token, c.upstream, c.service, c.method
            ));
        }
        self.logs_seen = st.logs.len();
        self.http_seen = st.http_calls.len();
        self.grpc_seen = st.grpc_calls.len();
        for l in lines {
            self.event(|| l);
        }
    }

    /// Runs a guest call under the failure policy: `Ok(None)` when the plugin is out of the
    /// way (failed earlier, or failed now and the policy handled it).
    fn guarded<R>(
        &mut self,
        stream: Option<u32>,
        f: impl FnOnce(&mut Plugin) -> Result<R>,
    ) -> Result<Option<R>> {
        if self.broken.is_some() {
            return Ok(None);
        }
        let r = f(self.plugin_mut()?);
        self.collect_logs();
        match r {
            Ok(v) => Ok(Some(v)),
            Err(Error::Trap { callback, message }) => {
                let text = format!("{callback}: {message}");
                let policy = self.policy;
                self.event(|| format!("  TRAP in {text}; failure policy {policy:?}"));
                self.traps.push(text.clone());
                self.broken = Some(text);
                self.failures += 1;
                let backoff = 1_000_000_000u64 << (self.failures - 1).min(6);
                self.retry_at_ns = self.now_ns.saturating_add(backoff.min(60_000_000_000));
                if let Some(id) = stream {
                    self.fail_stream(id);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Applies the policy to one stream while the plugin is down.
    fn fail_stream(&mut self, id: u32) {
        if self.policy == FailurePolicy::FailOpen {
            return;
        }
        let Some(p) = self.plugin.as_mut() else {
            return;
        };
        if let Ok(st) = p.stream_mut(id)
            && st.local_response.is_none()
        {
            st.local_response = Some(LocalResponse {
                status: 503,
                details: FAIL_DETAILS.into(),
                body: Vec::new(),
                headers: Vec::new(),
                grpc_status: None,
            });
            st.local_sent = true;
            self.event(|| format!("  local reply 503 ({FAIL_DETAILS}) on stream {id}"));
        }
    }

    /// Delivers proxy_done finalizations and queue notifications the last call caused.
    fn settle(&mut self) -> Result<()> {
        for _ in 0..1000 {
            let Some(p) = self.plugin.as_mut() else {
                return Ok(());
            };
            let done = std::mem::take(&mut p.state_mut().done_calls);
            let worker = self.settings.worker;
            let ready = {
                let mut sh = self.shared.lock();
                let at = sh.ready.iter().position(|(w, _, _)| *w == worker);
                at.and_then(|i| sh.ready.remove(i))
            };
            if done.is_empty() && ready.is_none() {
                return Ok(());
            }
            for id in done {
                self.event(|| format!("proxy_done on {id}: proxy_on_log, proxy_on_delete"));
                self.finish_context(id)?;
            }
            if let Some((_, context, queue)) = ready {
                self.event(|| format!("proxy_on_queue_ready(queue {queue})"));
                self.guarded(None, |p| p.queue_ready(context, queue))?;
            }
        }
        Ok(())
    }

    fn finish_context(&mut self, id: u32) -> Result<()> {
        self.guarded(Some(id), |p| p.log_and_delete(id))?;
        if let Some(st) = self
            .plugin
            .as_mut()
            .and_then(|p| p.state_mut().streams.remove(&id))
        {
            self.last = Some((id, st));
        }
        if self.current == Some(id) {
            self.current = None;
        }
        Ok(())
    }

    /// Starts a new stream and makes it current.
    pub fn new_stream(&mut self) -> Result<u32> {
        if self.broken.is_some()
            && self.policy == FailurePolicy::Reload
            && self.now_ns >= self.retry_at_ns
        {
            self.event(|| "reload: new instance".to_string());
            let old_logs = self.plugin.as_ref().map(|p| p.state().logs.clone());
            match Plugin::new(&self.compiled, self.settings.clone(), self.shared.clone()).and_then(
                |mut p| {
                    p.set_now(self.now_ns);
                    p.start().map(|_| p)
                },
            ) {
                Ok(mut p) => {
                    // Keep the log history across instances.
                    if let Some(mut logs) = old_logs {
                        self.logs_seen = logs.len();
                        logs.append(&mut p.state_mut().logs);
                        p.state_mut().logs = logs;
                    }
                    self.plugin = Some(p);
                    self.http_seen = 0;
                    self.grpc_seen = 0;
                    self.broken = None;
                    self.reloads += 1;
                    self.collect_logs();
                }
                Err(e) => {
                    self.failures += 1;
                    let backoff = 1_000_000_000u64 << (self.failures - 1).min(6);
                    self.retry_at_ns = self.now_ns.saturating_add(backoff.min(60_000_000_000));
                    self.event(|| format!("  reload failed: {e}"));
                }
            }
        }
        let broken = self.broken.is_some();
        let id = self.plugin_mut()?.reserve_stream();
        if broken {
            self.fail_stream(id);
        } else {
            self.event(|| format!("stream {id}: proxy_on_context_create"));
            self.guarded(Some(id), |p| p.create_stream_context(id))?;
        }
        self.current = Some(id);
        self.settle()?;
        Ok(id)
    }

    /// The current stream (or connection), if any.
    pub fn current(&self) -> Option<u32> {
        self.current
    }

    /// Makes an existing stream current.
    pub fn select(&mut self, id: u32) -> Result<()> {
        self.plugin()?.stream(id).ok_or(Error::NoStream(id))?;
        self.current = Some(id);
        Ok(())
    }

    fn open_stream(&mut self) -> Result<u32> {
        match self.current {
            Some(id) => Ok(id),
            None => self.new_stream(),
        }
    }

    fn live_stream(&mut self) -> Result<u32> {
        let id = self.current.ok_or(Error::NoStream(0))?;
        let st = self.plugin()?.stream(id).ok_or(Error::NoStream(id))?;
        if st.local_sent || st.reset {
            return Err(Error::NoStream(id));
        }
        Ok(id)
    }

    /// After a stream callback: record the action, apply a local response.
    fn after(
        &mut self,
        id: u32,
        side: Side,
        what: impl FnOnce() -> String,
        action: Option<Action>,
    ) -> Result<Action> {
        let action = match action {
            Some(a) => a,
            None if self.policy == FailurePolicy::FailOpen => Action::Continue,
            None => Action::Pause,
        };
        self.event(|| format!("  {} -> {action:?}", what()));
        let p = self.plugin_mut()?;
        let Ok(st) = p.stream_mut(id) else {
            return Ok(action);
        };
        match (side, action) {
            (Side::Request, Action::Continue) => {
                st.request_paused = false;
                st.request_headers_sent = st.request_headers.is_some();
                let body = std::mem::take(&mut st.request_body);
                st.request_forwarded.extend(body);
            }
            (Side::Response, Action::Continue) => {
                st.response_paused = false;
                st.response_headers_sent = st.response_headers.is_some();
                let body = std::mem::take(&mut st.response_body);
                st.response_forwarded.extend(body);
            }
            (Side::Request, Action::Pause) => st.request_paused = true,
            (Side::Response, Action::Pause) => st.response_paused = true,
        }
        if st.reset {
            self.event(|| format!("  stream {id} reset by the plugin"));
        }
        self.deliver_local_response(id)?;
        self.settle()?;
        Ok(action)
    }

    /// Envoy sends a local reply through the filter's own response path when the response
    /// has not started; once it has, the reply only replaces what goes downstream.
    fn deliver_local_response(&mut self, id: u32) -> Result<()> {
        let p = self.plugin_mut()?;
        let Ok(st) = p.stream_mut(id) else {
            return Ok(());
        };
        if st.local_sent {
            return Ok(());
        }
        let Some(lr) = st.local_response.clone() else {
            return Ok(());
        };
        st.local_sent = true;
        let through_filter = st.response_headers.is_none();
        let mut headers = HeaderMap::default();
        headers.add(":status", &lr.status.to_string());
        for (k, v) in &lr.headers {
            headers.add(k, v);
        }
        st.response_headers = Some(headers.clone());
        st.response_body = lr.body.clone();
        self.event(|| {
            format!(
                "  local reply {} ({}) on stream {id}",
                lr.status, lr.details
            )
        });
        if through_filter {
            let n = headers.len() as u32;
            let eos = lr.body.is_empty();
            self.event(|| {
                format!("  proxy_on_response_headers({n} headers, eos={eos}) for the local reply")
            });
            self.guarded(Some(id), |p| p.headers(id, Side::Response, n, eos))?;
            if !eos {
                let len = lr.body.len() as u32;
                self.guarded(Some(id), |p| p.body(id, Side::Response, len, true))?;
            }
        }
        let p = self.plugin_mut()?;
        if let Ok(st) = p.stream_mut(id) {
            let body = std::mem::take(&mut st.response_body);
            st.response_forwarded = body;
            st.response_headers_sent = true;
        }
        Ok(())
    }

    /// Request headers arrive from downstream (on a new stream unless one is current).
    /// A stream the failure policy already answered (the plugin is down, fail closed) stops
    /// here: `Pause`, with the 503 in [`Harness::local_response`].
    pub fn request_headers(&mut self, headers: &[(&str, &str)], eos: bool) -> Result<Action> {
        let id = self.open_stream()?;
        if self.plugin()?.stream(id).is_some_and(|s| s.local_sent) {
            let map = HeaderMap::from_pairs(headers);
            self.plugin_mut()?.stream_mut(id)?.request_headers = Some(map);
            return Ok(Action::Pause);
        }
        let id = self.live_stream()?;
        let map = HeaderMap::from_pairs(headers);
        let n = map.len() as u32;
        self.plugin_mut()?.stream_mut(id)?.request_headers = Some(map);
        let a = self.guarded(Some(id), |p| p.headers(id, Side::Request, n, eos))?;
        self.after(
            id,
            Side::Request,
            || format!("proxy_on_request_headers({n} headers, eos={eos})"),
            a,
        )
    }

    /// A request body chunk arrives.
    pub fn request_body(&mut self, chunk: &[u8], eos: bool) -> Result<Action> {
        let id = self.live_stream()?;
        let st = self.plugin_mut()?.stream_mut(id)?;
        st.request_body.extend_from_slice(chunk);
        let size = st.request_body.len() as u32;
        let a = self.guarded(Some(id), |p| p.body(id, Side::Request, size, eos))?;
        self.after(
            id,
            Side::Request,
            || format!("proxy_on_request_body({size} bytes, eos={eos})"),
            a,
        )
    }

    /// Request trailers arrive.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        let id = self.live_stream()?;
        let map = HeaderMap::from_pairs(trailers);
        let n = map.len() as u32;
        self.plugin_mut()?.stream_mut(id)?.request_trailers = Some(map);
        let a = self.guarded(Some(id), |p| p.trailers(id, Side::Request, n))?;
        self.after(
            id,
            Side::Request,
            || format!("proxy_on_request_trailers({n})"),
            a,
        )
    }

    /// Response headers arrive from upstream.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], eos: bool) -> Result<Action> {
        let id = self.live_stream()?;
        let map = HeaderMap::from_pairs(headers);
        let n = map.len() as u32;
        self.plugin_mut()?.stream_mut(id)?.response_headers = Some(map);
        let a = self.guarded(Some(id), |p| p.headers(id, Side::Response, n, eos))?;
        self.after(
            id,
            Side::Response,
            || format!("proxy_on_response_headers({n} headers, eos={eos})"),
            a,
        )
    }

    /// A response body chunk arrives.
    pub fn response_body(&mut self, chunk: &[u8], eos: bool) -> Result<Action> {
        let id = self.live_stream()?;
        let st = self.plugin_mut()?.stream_mut(id)?;
        st.response_body.extend_from_slice(chunk);
        let size = st.response_body.len() as u32;
        let a = self.guarded(Some(id), |p| p.body(id, Side::Response, size, eos))?;
        self.after(
            id,
            Side::Response,
            || format!("proxy_on_response_body({size} bytes, eos={eos})"),
            a,
        )
    }

    /// Response trailers arrive.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        let id = self.live_stream()?;
        let map = HeaderMap::from_pairs(trailers);
        let n = map.len() as u32;
        self.plugin_mut()?.stream_mut(id)?.response_trailers = Some(map);
        let a = self.guarded(Some(id), |p| p.trailers(id, Side::Response, n))?;
        self.after(
            id,
            Side::Response,
            || format!("proxy_on_response_trailers({n})"),
            a,
        )
    }

    /// L4: a new connection (a new stream context): `proxy_on_new_connection`.
    pub fn new_connection(&mut self) -> Result<Action> {
        let id = self.new_stream()?;
        self.event(|| format!("connection {id}: proxy_on_new_connection"));
        let a = self.guarded(Some(id), |p| p.new_connection(id))?;
        self.after_l4(id, true, a)
    }

    /// L4: bytes from downstream.
    pub fn downstream_data(&mut self, chunk: &[u8], eos: bool) -> Result<Action> {
        self.l4_data(chunk, eos, true)
    }

    /// L4: bytes from upstream.
    pub fn upstream_data(&mut self, chunk: &[u8], eos: bool) -> Result<Action> {
        self.l4_data(chunk, eos, false)
    }

    fn l4_data(&mut self, chunk: &[u8], eos: bool, downstream: bool) -> Result<Action> {
        let id = self.current.ok_or(Error::NoStream(0))?;
        let st = self.plugin_mut()?.stream_mut(id)?;
        if st.downstream_closed || st.upstream_closed {
            return Err(Error::NoStream(id));
        }
        let buf = if downstream {
            &mut st.downstream_data
        } else {
            &mut st.upstream_data
        };
        buf.extend_from_slice(chunk);
        let size = buf.len() as u32;
        self.event(|| {
            let side = if downstream { "downstream" } else { "upstream" };
            format!("proxy_on_{side}_data({size} bytes, eos={eos})")
        });
        let a = self.guarded(Some(id), |p| p.data(id, downstream, size, eos))?;
        self.after_l4(id, downstream, a)
    }

    fn after_l4(&mut self, id: u32, downstream: bool, action: Option<Action>) -> Result<Action> {
        // A failed plugin on a connection: closed, unless the policy lets traffic pass.
        let action = match action {
            Some(a) => a,
            None if self.policy == FailurePolicy::FailOpen => Action::Continue,
            None => {
                if let Ok(st) = self.plugin_mut()?.stream_mut(id) {
                    st.downstream_closed = true;
                    st.upstream_closed = true;
                }
                Action::Pause
            }
        };
        self.event(|| format!("  -> {action:?}"));
        if let Ok(st) = self.plugin_mut()?.stream_mut(id) {
            let (data, fwd, paused) = if downstream {
                (
                    &mut st.downstream_data,
                    &mut st.downstream_forwarded,
                    &mut st.downstream_paused,
                )
            } else {
                (
                    &mut st.upstream_data,
                    &mut st.upstream_forwarded,
                    &mut st.upstream_paused,
                )
            };
            match action {
                Action::Continue => {
                    *paused = false;
                    fwd.extend(std::mem::take(data));
                }
                Action::Pause => *paused = true,
            }
        }
        self.settle()?;
        Ok(action)
    }

    /// L4: the downstream (`downstream` true) or upstream connection closed; `peer` as the
    /// spec's `proxy_peer_type_t` (0 unknown, 1 local, 2 remote).
    pub fn connection_closed(&mut self, downstream: bool, peer: u32) -> Result<()> {
        let id = self.current.ok_or(Error::NoStream(0))?;
        self.event(|| format!("connection {id} closed (downstream={downstream}, peer={peer})"));
        self.guarded(Some(id), |p| p.connection_close(id, downstream, peer))?;
        self.settle()
    }

    /// The stream is over: `proxy_on_done`, then (if the plugin agrees, or later when it
    /// calls `proxy_done`) `proxy_on_log` and `proxy_on_delete`.
    pub fn end_stream(&mut self) -> Result<()> {
        let id = self.current.ok_or(Error::NoStream(0))?;
        self.plugin()?.stream(id).ok_or(Error::NoStream(id))?;
        let done = self.guarded(Some(id), |p| p.done(id))?;
        match done {
            Some(false) => {
                self.event(|| {
                    format!("stream {id}: proxy_on_done -> false (waits for proxy_done)")
                });
                self.plugin_mut()?.stream_mut(id)?.done_pending = true;
                self.current = None;
                self.settle()
            }
            _ => {
                self.event(|| format!("stream {id}: proxy_on_done, proxy_on_log, proxy_on_delete"));
                self.finish_context(id)?;
                self.settle()
            }
        }
    }

    /// Advances the clock by `by`, delivering ticks and callout timeouts on the way, each at
    /// its own time.
    pub fn tick(&mut self, by: Duration) -> Result<()> {
        let target = self
            .now_ns
            .saturating_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX));
        while let Some(p) = self.plugin.as_ref() {
            let st = p.state();
            let next_tick = if st.tick_period_ms > 0 {
                st.next_tick_ns
            } else {
                None
            };
            let timeout = st
                .http_calls
                .iter()
                .filter(|c| !c.answered && c.timeout_ms > 0)
                .map(|c| (c.at_ns + u64::from(c.timeout_ms) * 1_000_000, c.token))
                .min();
            let tick_due = next_tick.filter(|t| *t <= target);
            let timeout_due = timeout.filter(|(t, _)| *t <= target);
            match (tick_due, timeout_due) {
                (None, None) => break,
                (Some(t), to) if to.is_none_or(|(tt, _)| t <= tt) => {
                    self.set_now(t);
                    self.event(|| "proxy_on_tick".to_string());
                    let before = self.plugin()?.state().next_tick_ns;
                    self.guarded(None, |p| p.tick())?;
                    let p = self.plugin_mut()?;
                    let s = p.state_mut();
                    if s.next_tick_ns == before {
                        // Not changed by the tick itself.
                        let period = u64::from(s.tick_period_ms) * 1_000_000;
                        s.next_tick_ns = (period > 0).then(|| t + period);
                    }
                    self.settle()?;
                }
                (_, Some((t, token))) => {
                    self.set_now(t);
                    self.event(|| format!("http callout {token} timed out"));
                    self.answer_http(token, None)?;
                }
                (Some(_), None) => break,
            }
            if self.broken.is_some() {
                break;
            }
        }
        self.set_now(target);
        Ok(())
    }

    fn set_now(&mut self, ns: u64) {
        self.now_ns = ns;
        if let Some(p) = self.plugin.as_mut() {
            p.set_now(ns);
        }
    }

    /// HTTP callouts dispatched so far, answered or not.
    pub fn http_calls(&self) -> &[HttpCall] {
        self.plugin.as_ref().map_or(&[], |p| &p.state().http_calls)
    }

    /// gRPC calls and streams opened so far.
    pub fn grpc_calls(&self) -> &[GrpcCall] {
        self.plugin.as_ref().map_or(&[], |p| &p.state().grpc_calls)
    }

    /// Answers HTTP callout `token` with a response.
    pub fn respond_http(
        &mut self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        let mut h = HeaderMap::default();
        h.add(":status", &status.to_string());
        for (k, v) in headers {
            h.add(k, v);
        }
        self.event(|| format!("http callout {token} answered {status}"));
        self.answer_http(
            token,
            Some(CalloutResponse {
                headers: h,
                body: body.to_vec(),
                trailers: HeaderMap::default(),
            }),
        )
    }

    /// Fails HTTP callout `token` (a reset: the plugin sees zero headers).
    pub fn fail_http(&mut self, token: u32) -> Result<()> {
        self.event(|| format!("http callout {token} failed"));
        self.answer_http(token, None)
    }

    fn answer_http(&mut self, token: u32, response: Option<CalloutResponse>) -> Result<()> {
        let p = self.plugin_mut()?;
        let call = p
            .state_mut()
            .http_calls
            .iter_mut()
            .find(|c| c.token == token && !c.answered)
            .ok_or(Error::NoCallout(token))?;
        call.answered = true;
        let context = call.context;
        self.guarded(None, |p| p.http_call_response(context, token, response))?;
        self.settle()
    }

    /// Delivers gRPC events for call `token`; a `Close` ends it.
    pub fn respond_grpc(&mut self, token: u32, events: Vec<GrpcEvent>) -> Result<()> {
        let p = self.plugin_mut()?;
        let call = p
            .state()
            .grpc_calls
            .iter()
            .find(|c| c.token == token && !c.finished)
            .ok_or(Error::NoCallout(token))?;
        let context = call.context;
        for e in events {
            let closes = matches!(e, GrpcEvent::Close { .. });
            self.event(|| format!("grpc callout {token}: {e:?}"));
            if closes
                && let Some(c) = self
                    .plugin_mut()?
                    .state_mut()
                    .grpc_calls
                    .iter_mut()
                    .find(|c| c.token == token)
            {
                c.finished = true;
            }
            self.guarded(None, |p| p.grpc_event(context, token, e))?;
            self.settle()?;
        }
        Ok(())
    }

    /// Adds a line of the caller's own to the trace.
    pub fn note(&mut self, text: String) {
        self.event(|| text);
    }

    /// Delivers `proxy_on_queue_ready` for items other workers enqueued since this one last ran.
    pub fn deliver_queued(&mut self) -> Result<()> {
        self.settle()
    }

    /// Calls the plugin's `proxy_on_foreign_function`.
    pub fn call_foreign(&mut self, function_id: u32, args: &[u8]) -> Result<()> {
        let args = args.to_vec();
        self.guarded(None, |p| p.foreign_function(function_id, args))?;
        self.settle()
    }

    fn stream_view(&self) -> Option<&Stream> {
        let p = self.plugin.as_ref()?;
        match self.current.and_then(|id| p.stream(id)) {
            Some(st) => Some(st),
            None => self.last.as_ref().map(|(_, st)| st),
        }
    }

    /// The current (or last finished) stream.
    pub fn stream(&self) -> Option<&Stream> {
        self.stream_view()
    }

    /// A request header of the current (or last finished) stream, as the plugin left it.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.stream_view()?.request_headers.as_ref()?.get(name)
    }

    /// A response header of the current (or last finished) stream.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.stream_view()?.response_headers.as_ref()?.get(name)
    }

    /// The local response of the current (or last finished) stream.
    pub fn local_response(&self) -> Option<&LocalResponse> {
        self.stream_view()?.local_response.as_ref()
    }

    /// Checks a request header's value (`None`: absent).
    pub fn expect_request_header(
        &self,
        name: &str,
        value: impl Into<Option<&'static str>>,
    ) -> Result<()> {
        expect_eq(
            &format!("request header {name}"),
            self.request_header(name).as_deref(),
            value.into(),
        )
    }

    /// Checks a response header's value (`None`: absent).
    pub fn expect_response_header(
        &self,
        name: &str,
        value: impl Into<Option<&'static str>>,
    ) -> Result<()> {
        expect_eq(
            &format!("response header {name}"),
            self.response_header(name).as_deref(),
            value.into(),
        )
    }

    /// A counter's or gauge's value.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.shared.metric(name).map(|m| m.value)
    }

    /// A histogram's samples.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.shared.metric(name).map(|m| m.samples)
    }

    /// Names of all defined metrics.
    pub fn metric_names(&self) -> BTreeSet<String> {
        self.shared.metrics().into_iter().map(|m| m.name).collect()
    }

    /// What the workers share.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Everything the plugin logged, in order.
    pub fn logs(&self) -> &[LogEntry] {
        self.plugin.as_ref().map_or(&[], |p| &p.state().logs)
    }

    /// True if some log line at `level` or above contains `text`.
    pub fn logged(&self, level: LogLevel, text: &str) -> bool {
        self.logs()
            .iter()
            .any(|l| l.level >= level && l.message.contains(text))
    }

    /// Traps seen so far, as `callback: message`.
    pub fn traps(&self) -> &[String] {
        &self.traps
    }

    /// How often the reload policy made a fresh instance.
    pub fn reloads(&self) -> u32 {
        self.reloads
    }

    /// Why the plugin is out of the way, if it is.
    pub fn failure(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The trace so far.
    pub fn trace(&self) -> &[TraceEvent] {
        &self.trace
    }

    /// Milliseconds of harness time since the start.
    pub fn elapsed_ms(&self) -> u64 {
        self.now_ns.saturating_sub(self.start_ns) / 1_000_000
    }

    /// How many times the current instance called each host function, by name (see
    /// [`HostState::hostcalls`](crate::state::HostState::hostcalls)): take it before and after
    /// a request for what the request cost in crossings of the Wasm boundary, which is most of
    /// a filter's cost in Envoy.
    pub fn hostcalls(&self) -> BTreeMap<&'static str, u64> {
        self.plugin_state()
            .map(crate::state::HostState::hostcalls)
            .unwrap_or_default()
    }

    /// The plugin, for direct access to its state.
    pub fn plugin_state(&self) -> Option<&crate::state::HostState> {
        self.plugin.as_ref().map(|p| p.state())
    }
}

fn expect_eq(what: &str, got: Option<&str>, want: Option<&str>) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Expectation(format!(
            "{what}: expected {want:?}, got {got:?}"
        )))
    }
}
