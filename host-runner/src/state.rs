//! Everything a plugin instance sees, kept in its wasmtime `Store`: streams, buffers,
//! properties, callouts, logs and clock, plus a handle on what workers share (shared data,
//! queues, metrics). No globals, so any number of hosts run side by side in one process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::{Memory, StoreLimits, TypedFunc};

use crate::abi::{LogLevel, MetricType, Pairs};

/// A foreign function the caller registers for `proxy_call_foreign_function`: arguments in,
/// results out.
pub type ForeignFn = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// One header map: ordered, multi-valued, names compared in lower case as Envoy stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap(pub Pairs);

impl HeaderMap {
    /// A map from pairs; names are lower-cased.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        HeaderMap(
            pairs
                .iter()
                .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.as_ref().to_string()))
                .collect(),
        )
    }

    /// Every value of `name`, joined by `,` as Envoy's `get` does for repeated headers.
    pub fn get(&self, name: &str) -> Option<String> {
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = values.next()?;
        let mut out = first.to_string();
        for v in values {
            out.push(',');
            out.push_str(v);
        }
        Some(out)
    }

    /// Appends a value.
    pub fn add(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// Replaces every value of `name` with one.
    pub fn replace(&mut self, name: &str, value: &str) {
        let lower = name.to_ascii_lowercase();
        match self.0.iter().position(|(k, _)| *k == lower) {
            Some(at) => {
                self.0[at].1 = value.to_string();
                let mut i = 0;
                self.0.retain(|(k, _)| {
                    i += 1;
                    i - 1 == at || *k != lower
                });
            }
            None => self.0.push((lower, value.to_string())),
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ABI's serialization.
    pub fn serialize(&self) -> Vec<u8> {
        crate::abi::serialize_pairs(self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// A local reply sent with `proxy_send_local_response` (or by the failure policy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u32,
    /// Envoy's response code details.
    pub details: String,
    /// Body.
    #[serde(serialize_with = "lossy")]
    pub body: Vec<u8>,
    /// Extra response headers.
    pub headers: Pairs,
    /// gRPC status, when the plugin gave one (`u32::MAX` on the wire means none).
    pub grpc_status: Option<u32>,
}

fn lossy<S: serde::Serializer>(b: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

/// One HTTP stream: its maps, bodies, pause state and what the plugin did to it.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// Request headers once received.
    pub request_headers: Option<HeaderMap>,
    /// Request trailers once received (or added by the plugin at end of body).
    pub request_trailers: Option<HeaderMap>,
    /// Response headers once received.
    pub response_headers: Option<HeaderMap>,
    /// Response trailers once received.
    pub response_trailers: Option<HeaderMap>,
    /// Request body the host holds (buffered while paused).
    pub request_body: Vec<u8>,
    /// Response body the host holds.
    pub response_body: Vec<u8>,
    /// Request body passed upstream.
    pub request_forwarded: Vec<u8>,
    /// Response body passed downstream.
    pub response_forwarded: Vec<u8>,
    /// Request processing stopped by the plugin.
    pub request_paused: bool,
    /// Response processing stopped by the plugin.
    pub response_paused: bool,
    /// Set by `proxy_send_local_response`.
    pub local_response: Option<LocalResponse>,
    /// Set by `proxy_close_stream`.
    pub reset: bool,
    /// Properties seeded for this stream only.
    pub properties: Properties,
    /// The plugin answered false from `proxy_on_done` and has not called `proxy_done` yet.
    pub done_pending: bool,
    /// The local response went downstream (the stream takes no more events).
    pub local_sent: bool,
    /// Request headers went upstream.
    pub request_headers_sent: bool,
    /// Response headers went downstream.
    pub response_headers_sent: bool,
    /// L4: data from downstream the host holds (buffered while paused).
    pub downstream_data: Vec<u8>,
    /// L4: data from upstream the host holds.
    pub upstream_data: Vec<u8>,
    /// L4: data passed on upstream.
    pub downstream_forwarded: Vec<u8>,
    /// L4: data passed on downstream.
    pub upstream_forwarded: Vec<u8>,
    /// L4: downstream processing stopped by the plugin.
    pub downstream_paused: bool,
    /// L4: upstream processing stopped by the plugin.
    pub upstream_paused: bool,
    /// L4: the plugin closed the downstream connection.
    pub downstream_closed: bool,
    /// L4: the plugin closed the upstream connection.
    pub upstream_closed: bool,
}

/// The property tree: paths (segments) to bytes, seeded by the caller.
#[derive(Debug, Clone, Default)]
pub struct Properties(pub BTreeMap<Vec<String>, Vec<u8>>);

impl Properties {
    /// Sets `path` (segments) to `value`.
    pub fn set(&mut self, path: &[&str], value: impl Into<Vec<u8>>) {
        self.0
            .insert(path.iter().map(|s| s.to_string()).collect(), value.into());
    }

    /// The value at `path`.
    pub fn get(&self, path: &[String]) -> Option<&[u8]> {
        self.0.get(path).map(Vec::as_slice)
    }
}

/// The clock `proxy_get_current_time_nanoseconds`, `clock_time_get` and ticks use.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Deterministic: starts at the given Unix nanoseconds and moves only on `tick`.
    Virtual(u64),
    /// The system clock.
    Real,
}

impl Clock {
    /// Unix time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Virtual(ns) => *ns,
            Clock::Real => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

/// An HTTP callout the plugin dispatched.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpCall {
    /// Token returned to the plugin.
    pub token: u32,
    /// Context that dispatched it (its response goes there).
    pub context: u32,
    /// Cluster name.
    pub upstream: String,
    /// Request headers, pseudo-headers included.
    pub headers: Pairs,
    /// Request body.
    #[serde(serialize_with = "lossy")]
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Pairs,
    /// Timeout in milliseconds.
    pub timeout_ms: u32,
    /// Virtual time it was dispatched at.
    pub at_ns: u64,
    /// Answered (by the caller or by its timeout).
    pub answered: bool,
}

impl HttpCall {
    /// The value of a request header of the callout.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A gRPC call or stream the plugin opened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrpcCall {
    /// Token returned to the plugin.
    pub token: u32,
    /// Context that opened it.
    pub context: u32,
    /// Cluster name (or serialized GrpcService).
    pub upstream: String,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata.
    pub metadata: Pairs,
    /// Messages sent: the call's one message, or each `proxy_grpc_send` on a stream.
    #[serde(skip)]
    pub messages: Vec<Vec<u8>>,
    /// A stream (`proxy_grpc_stream`) rather than a unary call.
    pub streaming: bool,
    /// Timeout in milliseconds (unary calls).
    pub timeout_ms: u32,
    /// The plugin half-closed the stream (`end_stream` on a send).
    pub local_closed: bool,
    /// Cancelled or closed by the plugin, or closed by the host.
    pub finished: bool,
}

/// A log line the plugin wrote (`proxy_log` or stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogEntry {
    /// Level.
    pub level: LogLevel,
    /// Message.
    pub message: String,
}

/// What a plugin's callback can read as "the response" of a callout.
#[derive(Debug, Clone, Default)]
pub struct CalloutResponse {
    /// HTTP call response headers or gRPC initial metadata.
    pub headers: HeaderMap,
    /// Body or message.
    pub body: Vec<u8>,
    /// Trailers or trailing metadata.
    pub trailers: HeaderMap,
}

/// The buffers only some callbacks may read.
#[derive(Debug, Clone, Default)]
pub struct CallbackBuffers {
    /// Response of the HTTP callout being delivered.
    pub http_response: Option<CalloutResponse>,
    /// gRPC metadata and message being delivered.
    pub grpc: Option<CalloutResponse>,
    /// Foreign function arguments being delivered.
    pub foreign_args: Option<Vec<u8>>,
}

/// One defined metric.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metric {
    /// Name.
    pub name: String,
    /// Type.
    pub kind: MetricType,
    /// Counter or gauge value (gauges may go negative through increments).
    pub value: i64,
    /// Histogram samples.
    pub samples: Vec<u64>,
}

/// A shared queue.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    pub vm_id: String,
    pub name: String,
    /// (worker, root context) told on enqueue.
    pub owner: (u32, u32),
    pub items: VecDeque<Vec<u8>>,
}

/// What the workers of one plugin share, as Envoy shares them across its worker threads.
#[derive(Debug, Default)]
pub(crate) struct SharedInner {
    pub data: HashMap<String, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queues: Vec<Queue>,
    /// (worker, context, queue id) to deliver `proxy_on_queue_ready` to.
    pub ready: VecDeque<(u32, u32, u32)>,
    pub metrics: Vec<Metric>,
    pub metric_ids: HashMap<(String, u8), u32>,
}

/// Shared data, queues and metrics; clone one into several hosts to make them workers of one
/// plugin.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<SharedInner>>);

impl Shared {
    /// A fresh, empty set.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SharedInner> {
        // A poisoned lock only means another worker panicked mid-update: the data is still the
        // best there is.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A metric by name.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.lock().metrics.iter().find(|m| m.name == name).cloned()
    }

    /// All metrics, in definition order.
    pub fn metrics(&self) -> Vec<Metric> {
        self.lock().metrics.clone()
    }

    /// A shared data value and its CAS.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().data.get(key).cloned()
    }

    /// Sets a shared data value, as another VM would.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut s = self.lock();
        s.next_cas = s.next_cas.wrapping_add(1).max(1);
        let cas = s.next_cas;
        s.data.insert(key.to_string(), (value.to_vec(), cas));
    }
}

/// Settings of one instance, fixed when it starts.
#[derive(Clone)]
pub struct InstanceSettings {
    /// VM configuration bytes.
    pub vm_config: Vec<u8>,
    /// Plugin configuration bytes.
    pub plugin_config: Vec<u8>,
    /// `root_id` (Envoy's plugin root_id).
    pub root_id: String,
    /// `vm_id`, which shared queues are resolved by.
    pub vm_id: String,
    /// `plugin_name`.
    pub plugin_name: String,
    /// Level reported by `proxy_get_log_level`; lower messages are dropped.
    pub log_level: LogLevel,
    /// Clusters HTTP and gRPC callouts may target; `None` accepts any name.
    pub clusters: Option<BTreeSet<String>>,
    /// Environment for `environ_get`.
    pub env: Vec<(String, String)>,
    /// Properties every context sees.
    pub properties: Properties,
    /// Clock.
    pub clock: Clock,
    /// Seed of `random_get`.
    pub seed: u64,
    /// Foreign functions by name.
    pub foreign: BTreeMap<String, ForeignFn>,
    /// Worker index among the instances sharing [`Shared`].
    pub worker: u32,
    /// Routes as an Envoy route with `cluster_header` does: a stream's upstream cluster
    /// (`xds.cluster_name`) is the value this request header has when the attribute is read,
    /// after the plugin has seen (and maybe set) the request headers. `None`: streams have no
    /// cluster unless a property names one.
    pub cluster_header: Option<String>,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        Self {
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            root_id: String::new(),
            vm_id: String::new(),
            plugin_name: "plugin".into(),
            log_level: LogLevel::Trace,
            clusters: None,
            env: Vec::new(),
            properties: Properties::default(),
            // 2026-01-01T00:00:00Z: a fixed, plausible start.
            clock: Clock::Virtual(1_767_225_600_000_000_000),
            seed: 0x5eed,
            foreign: BTreeMap::new(),
            worker: 0,
            cluster_header: None,
        }
    }
}

/// The data of one instance's `Store`.
pub struct HostState {
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<u32, u32>>,
    pub(crate) limits: StoreLimits,
    pub(crate) settings: InstanceSettings,
    pub(crate) shared: Shared,
    pub(crate) root_context: u32,
    /// Context of the running callback; `proxy_set_effective_context` moves it.
    pub(crate) effective: u32,
    pub(crate) streams: BTreeMap<u32, Stream>,
    pub(crate) buffers: CallbackBuffers,
    /// In on_vm_start / on_configure: which configuration may be read.
    pub(crate) in_vm_start: bool,
    pub(crate) in_configure: bool,
    pub(crate) now_ns: u64,
    pub(crate) tick_period_ms: u32,
    pub(crate) next_tick_ns: Option<u64>,
    pub(crate) next_token: u32,
    pub(crate) http_calls: Vec<HttpCall>,
    pub(crate) grpc_calls: Vec<GrpcCall>,
    /// For `proxy_get_status`.
    pub(crate) status: (u32, Vec<u8>),
    pub(crate) logs: Vec<LogEntry>,
    /// Names of unimplemented functions already logged once.
    pub(crate) unimplemented: BTreeSet<String>,
    /// Contexts whose plugin called `proxy_done`.
    pub(crate) done_calls: Vec<u32>,
    pub(crate) rng: u64,
    pub(crate) exit_code: Option<u32>,
    /// Calls made to each host function, in order of first call. A scan over the dozen or so
    /// a plugin uses costs less per call than hashing the name.
    pub(crate) hostcalls: Vec<(&'static str, u64)>,
}

impl HostState {
    pub(crate) fn new(settings: InstanceSettings, shared: Shared, limits: StoreLimits) -> Self {
        let now_ns = settings.clock.now_ns();
        let rng = settings.seed | 1;
        Self {
            memory: None,
            alloc: None,
            limits,
            settings,
            shared,
            root_context: 0,
            effective: 0,
            streams: BTreeMap::new(),
            buffers: CallbackBuffers::default(),
            in_vm_start: false,
            in_configure: false,
            now_ns,
            tick_period_ms: 0,
            next_tick_ns: None,
            next_token: 1,
            http_calls: Vec::new(),
            grpc_calls: Vec::new(),
            status: (0, Vec::new()),
            logs: Vec::new(),
            unimplemented: BTreeSet::new(),
            done_calls: Vec::new(),
            rng,
            exit_code: None,
            hostcalls: Vec::new(),
        }
    }

    /// Counts one call of the host function `name`.
    pub(crate) fn count(&mut self, name: &'static str) {
        match self.hostcalls.iter_mut().find(|(n, _)| *n == name) {
            Some((_, calls)) => *calls += 1,
            None => self.hostcalls.push((name, 1)),
        }
    }

    /// How many times the plugin called each host function (proxy-wasm and WASI) since this
    /// instance started; functions it never called are absent. Imports host-runner does not
    /// implement (given stubs when the module is loaded) are not counted.
    pub fn hostcalls(&self) -> BTreeMap<&'static str, u64> {
        self.hostcalls.iter().copied().collect()
    }

    /// Now, by the instance's clock.
    pub(crate) fn now(&self) -> u64 {
        match self.settings.clock {
            Clock::Virtual(_) => self.now_ns,
            Clock::Real => Clock::Real.now_ns(),
        }
    }

    /// The stream of the effective context, if it is one.
    pub(crate) fn stream_mut(&mut self) -> Option<&mut Stream> {
        self.streams.get_mut(&self.effective)
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        if level >= self.settings.log_level {
            self.logs.push(LogEntry { level, message });
        }
    }

    /// Logs the first use of a function the host does not implement.
    pub(crate) fn unimplemented(&mut self, name: &str) {
        if self.unimplemented.insert(name.to_string()) {
            self.log(
                LogLevel::Warn,
                format!("host-runner: {name} is not implemented; it returns UNIMPLEMENTED"),
            );
        }
    }

    pub(crate) fn token(&mut self) -> u32 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        t
    }

    /// xorshift64*: deterministic per seed, which is all `random_get` needs in a test host.
    pub(crate) fn random(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let mut x = self.rng;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
