//! The only module that touches proxy-wasm hostcalls: it turns Envoy's callbacks into calls on
//! the plain-Rust [`Router`] and [`Telemetry`], and their answers into headers, callouts and
//! metrics.
//!
//! Envoy runs one Wasm VM per worker thread. Each VM holds one root context per active
//! configuration (during an ECDS update the old and the new one live side by side), so the
//! per-worker telemetry lives in a thread-local [`Vm`] that every root context of the VM
//! shares, while each root context carries its own routing table: a request is routed by the
//! configuration it started under.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use shadowplane_wire::{RoutingMode, SessionKey, ValidConfig, ValidTelemetry};

use crate::routing::{Router, cookie_value, parse_stamp};
use crate::telemetry::{
    DeliveryStats, OVERFLOW_CLUSTER, Outgoing, RequestRecord, Settings, Telemetry,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

thread_local! {
    static VM: RefCell<Option<Vm>> = const { RefCell::new(None) };
}

/// Per-VM (per-worker) state shared by all root and HTTP contexts of the VM.
struct Vm {
    telemetry: Telemetry,
    target: Option<ValidTelemetry>,
    rng: fastrand::Rng,
    metrics: Metrics,
    /// Set after the first failed dispatch is logged, cleared on the next success, so an outage
    /// logs one line instead of one per second.
    outage_logged: bool,
}

fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| vm.borrow_mut().as_mut().map(f))
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// The response header the route stamps with `%UPSTREAM_CLUSTER% %RESPONSE_CODE%` (see
/// envoy-config/filter-static/routes.yaml); read and removed in `on_http_response_headers`.
const UPSTREAM_HEADER: &str = "x-shadowplane-upstream";

/// A header's value as bytes. The SDK's `get_map_value` panics (and so traps the VM) on a value
/// that is not UTF-8, which HTTP allows (obs-text, 0x80 to 0xFF) and any client or upstream can
/// send: every header is read as bytes.
fn header_bytes(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

/// A header's value as text; a value that is not UTF-8 counts as absent.
fn header(map: MapType, name: &str) -> Option<String> {
    header_bytes(map, name).and_then(|b| String::from_utf8(b).ok())
}

fn property_string(path: &[&str]) -> Option<String> {
    property(path).and_then(|b| String::from_utf8(b).ok())
}

/// Integer attributes arrive as 8 little-endian bytes.
fn property_u64(path: &[&str]) -> Option<u64> {
    let b: [u8; 8] = property(path)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Envoy metric ids, defined on first use.
#[derive(Default)]
struct Metrics {
    reports_sent: Option<u32>,
    reports_failed: Option<u32>,
    reports_dropped: Option<u32>,
    reports_buffered: Option<u32>,
    /// By group name, in order of first request; at most `max_clusters` and the overflow group.
    groups: Vec<(String, GroupMetrics)>,
    last: DeliveryStats,
}

struct GroupMetrics {
    rq_total: Option<u32>,
    rq_error: Option<u32>,
    rq_time_ms: Option<u32>,
    /// Counts not yet added to Envoy's counters: counters are flushed once per tick rather than
    /// per request, which saves two hostcalls on every request.
    pending_total: u64,
    pending_error: u64,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn bump(id: Option<u32>, by: u64) {
    if let (Some(id), Ok(by)) = (id, i64::try_from(by))
        && by > 0
    {
        let _ = hostcalls::increment_metric(id, by);
    }
}

/// Metric names allow what Envoy's stat names allow; anything else in a cluster name becomes `_`.
fn stat_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Metrics {
    fn init(&mut self) {
        self.reports_sent = define(MetricType::Counter, "shadowplane.reports_sent");
        self.reports_failed = define(MetricType::Counter, "shadowplane.reports_failed");
        self.reports_dropped = define(MetricType::Counter, "shadowplane.reports_dropped");
        self.reports_buffered = define(MetricType::Gauge, "shadowplane.reports_buffered");
    }

    /// The index of `name`'s metrics, defined on its first request; past `cap` groups, the
    /// overflow group's. A scan over a handful of groups costs less per request than hashing
    /// the name.
    fn slot(&mut self, name: &str, cap: usize) -> usize {
        let find = |groups: &[(String, GroupMetrics)], name: &str| {
            groups.iter().position(|(n, _)| n == name)
        };
        if let Some(at) = find(&self.groups, name) {
            return at;
        }
        let name = if self.groups.len() < cap {
            name
        } else {
            OVERFLOW_CLUSTER
        };
        if let Some(at) = find(&self.groups, name) {
            return at;
        }
        let p = format!("shadowplane.group.{}", stat_safe(name));
        self.groups.push((
            name.to_string(),
            GroupMetrics {
                rq_total: define(MetricType::Counter, &format!("{p}.rq_total")),
                rq_error: define(MetricType::Counter, &format!("{p}.rq_error")),
                rq_time_ms: define(MetricType::Histogram, &format!("{p}.rq_time_ms")),
                pending_total: 0,
                pending_error: 0,
            },
        ));
        self.groups.len() - 1
    }

    fn request(&mut self, r: &RequestRecord, cap: usize) {
        let name = r.cluster.as_deref().unwrap_or(crate::telemetry::NO_CLUSTER);
        let at = self.slot(name, cap);
        let Some((_, g)) = self.groups.get_mut(at) else {
            return;
        };
        g.pending_total += 1;
        if !matches!(r.status, Some(100..=499)) {
            g.pending_error += 1;
        }
        // Histograms take samples one by one.
        if let (Some(id), Some(us)) = (g.rq_time_ms, r.latency_us) {
            let _ = hostcalls::record_metric(id, (us / 1000.0) as u64);
        }
    }

    /// Adds the counts gathered since the last tick to Envoy's counters.
    fn flush(&mut self) {
        for (_, g) in &mut self.groups {
            bump(g.rq_total, std::mem::take(&mut g.pending_total));
            bump(g.rq_error, std::mem::take(&mut g.pending_error));
        }
    }

    fn delivery(&mut self, now: DeliveryStats, buffered: usize) {
        bump(self.reports_sent, now.sent.saturating_sub(self.last.sent));
        bump(
            self.reports_failed,
            now.failed.saturating_sub(self.last.failed),
        );
        bump(
            self.reports_dropped,
            now.dropped.saturating_sub(self.last.dropped),
        );
        if let Some(id) = self.reports_buffered {
            let _ = hostcalls::record_metric(id, buffered as u64);
        }
        self.last = now;
    }
}

fn settings(c: &ValidConfig) -> Settings {
    let timeout = c.telemetry.as_ref().map_or(0, |t| t.timeout_ms);
    Settings {
        interval_ms: c.report_interval_ms,
        buffer_reports: c.buffer_reports,
        max_clusters: c.max_clusters,
        // A little past the callout's own timeout, in case Envoy never answers at all.
        callout_deadline_ms: timeout + 1000,
    }
}

/// A random per-VM identity: Envoy exposes no worker index to Wasm, and the identity only has
/// to tell this VM's reports apart from every other VM's.
fn worker_id() -> String {
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{:016x}", seed ^ now_ns())
}

#[derive(Default)]
struct Root {
    config: Option<Rc<(ValidConfig, Router)>>,
    /// Callout token to report sequence.
    pending: HashMap<u32, u64>,
}

impl Root {
    fn send(&mut self, out: Outgoing) {
        let Some(target) = with_vm(|vm| vm.target.clone()).flatten() else {
            return;
        };
        let mut headers = vec![
            (":method", "POST"),
            (":path", target.path.as_str()),
            (":authority", target.authority.as_str()),
            ("content-type", shadowplane_wire::REPORT_CONTENT_TYPE),
        ];
        let auth = target.auth_token.as_ref().map(|t| format!("Bearer {t}"));
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let timeout = Duration::from_millis(target.timeout_ms);
        match hostcalls::dispatch_http_call(
            &target.cluster,
            headers,
            Some(&out.body),
            vec![],
            timeout,
        ) {
            Ok(token) => {
                self.pending.insert(token, out.sequence);
            }
            Err(status) => {
                with_vm(|vm| {
                    vm.telemetry.failed(out.sequence);
                    if !vm.outage_logged {
                        vm.outage_logged = true;
                        log(
                            LogLevel::Warn,
                            &format!(
                                "shadowplane: cannot send reports to cluster \"{}\": {status:?}",
                                target.cluster
                            ),
                        );
                    }
                });
            }
        }
    }

    fn publish_delivery() {
        with_vm(|vm| {
            vm.metrics
                .delivery(vm.telemetry.stats(), vm.telemetry.buffered())
        });
    }

    fn publish_metrics() {
        with_vm(|vm| vm.metrics.flush());
        Self::publish_delivery();
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let Some(sequence) = self.pending.remove(&token) else {
            return;
        };
        let status = header(MapType::HttpCallResponseHeaders, ":status");
        let ok = status
            .as_deref()
            .is_some_and(|s| s.starts_with('2') && s.len() == 3);
        let next = with_vm(|vm| {
            if ok {
                vm.outage_logged = false;
                vm.telemetry.delivered(sequence, now_ms())
            } else {
                vm.telemetry.failed(sequence);
                if !vm.outage_logged {
                    vm.outage_logged = true;
                    let shown = status.as_deref().unwrap_or("no response");
                    log(
                        LogLevel::Warn,
                        &format!("shadowplane: report not accepted by the collector: {shown}"),
                    );
                }
                None
            }
        })
        .flatten();
        if let Some(out) = next {
            self.send(out);
        }
        Self::publish_delivery();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let config = match ValidConfig::from_json(&raw) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Error, &format!("shadowplane: {e}"));
                return false;
            }
        };
        let s = settings(&config);
        let target = config.telemetry.clone();
        VM.with(|vm| {
            let mut vm = vm.borrow_mut();
            match vm.as_mut() {
                Some(vm) => {
                    vm.telemetry.reconfigure(s.clone());
                    vm.target = target;
                }
                None => {
                    let node = property_string(&["node", "id"]).unwrap_or_default();
                    let node = if node.is_empty() {
                        "unknown".to_string()
                    } else {
                        node
                    };
                    let worker = worker_id();
                    let mut metrics = Metrics::default();
                    metrics.init();
                    let seed = std::collections::hash_map::RandomState::new()
                        .build_hasher()
                        .finish();
                    *vm = Some(Vm {
                        telemetry: Telemetry::new(node, worker, s.clone(), now_ms()),
                        target,
                        rng: fastrand::Rng::with_seed(seed),
                        metrics,
                        outage_logged: false,
                    });
                }
            }
        });
        // Tick faster than the window so that a window closes within a quarter interval of due.
        let tick = (s.interval_ms / 4).clamp(50, 1000);
        let _ = hostcalls::set_tick_period(Duration::from_millis(tick));
        let router = Router::new(&config);
        self.config = Some(Rc::new((config, router)));
        true
    }

    fn on_tick(&mut self) {
        let out = with_vm(|vm| {
            if vm.target.is_some() {
                vm.telemetry.tick(now_ms())
            } else {
                None
            }
        })
        .flatten();
        if let Some(out) = out {
            self.send(out);
        }
        Self::publish_metrics();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Stream {
            config,
            start_ns: None,
            status: None,
            cluster: None,
            request_bytes: 0,
            response_bytes: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Rc<(ValidConfig, Router)>,
    start_ns: Option<u64>,
    /// The response code: from the route's stamp, else `:status` of the response headers Envoy
    /// sent downstream (a local reply's too).
    status: Option<u32>,
    /// The cluster Envoy routed to, as the route stamped it on the response.
    cluster: Option<String>,
    /// Body bytes, summed from the body callbacks' sizes: counting them there costs no
    /// hostcall, where the `request.total_size` attributes would cost two per request.
    request_bytes: u64,
    response_bytes: u64,
}

impl Stream {
    /// The session key's bytes: a key that is not UTF-8 is still a key, and stays sticky.
    fn session_key(&self, router: &Router) -> Option<Vec<u8>> {
        match router.session_key()? {
            SessionKey::Header(h) => header_bytes(MapType::HttpRequestHeaders, h),
            SessionKey::Cookie(c) => {
                let header = header_bytes(MapType::HttpRequestHeaders, "cookie")?;
                // Cookie names are tokens (ASCII), so a lossy view finds them; a value with
                // bytes outside UTF-8 maps to the same replacement text every time.
                cookie_value(&String::from_utf8_lossy(&header), c).map(|v| v.as_bytes().to_vec())
            }
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.start_ns = Some(now_ns());
        let config = Rc::clone(&self.config);
        let (cfg, router) = &*config;
        let sticky = match router.mode() {
            RoutingMode::Sticky => self.session_key(router).filter(|k| !k.is_empty()),
            RoutingMode::Random => None,
        };
        let group = match sticky {
            Some(key) => router.pick_sticky(&key),
            None => router.pick_random(with_vm(|vm| vm.rng.u64(..)).unwrap_or(0)),
        };
        // Setting a request header makes Envoy clear its route cache, so the route's
        // `cluster_header` sees the group.
        let _ =
            hostcalls::set_map_value(MapType::HttpRequestHeaders, &cfg.route_header, Some(group));
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        // Without buffering, each call reports the size of the new chunk only.
        self.request_bytes += body_size as u64;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // The route stamps the cluster it used and the response code on the response
        // (`%UPSTREAM_CLUSTER% %RESPONSE_CODE%`): one header-map lookup and a removal cost
        // Envoy less than the `xds.cluster_name` attribute (an arena and an expression
        // evaluation) and a second lookup for `:status`, each of which also calls into the VM
        // to allocate the answer. Without the stamp (a route that does not set it), `on_log`
        // falls back to the attribute; without a code in it (a local reply), `:status` is read.
        let stamped = header(MapType::HttpResponseHeaders, UPSTREAM_HEADER);
        if let Some(stamp) = stamped {
            // Clients never see it.
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, UPSTREAM_HEADER, None);
            let (cluster, code) = parse_stamp(&stamp);
            // The cluster is the stamp's first word(s): keep the stamp's buffer rather than
            // allocating a copy on every request. It starts at the stamp's first non-blank
            // character, so `find` lands on it.
            let range = cluster.and_then(|c| stamp.find(c).map(|at| at..at + c.len()));
            self.status = code;
            self.cluster = range.map(|r| {
                let mut stamp = stamp;
                stamp.truncate(r.end);
                stamp.drain(..r.start);
                stamp
            });
        }
        if self.status.is_none() {
            self.status = header(MapType::HttpResponseHeaders, ":status")
                .and_then(|s| s.parse::<u32>().ok())
                .filter(|c| *c > 0);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.response_bytes += body_size as u64;
        Action::Continue
    }

    fn on_log(&mut self) {
        let now = now_ns();
        let status = self.status;
        // The flags only tell resets and timeouts apart, and those end in a 5xx or no response:
        // skip the attribute (a hostcall and an allocation) for every ordinary response.
        let flags = match status {
            Some(100..=499) => 0,
            _ => property_u64(&["response", "flags"]).unwrap_or(0),
        };
        let record = RequestRecord {
            cluster: self
                .cluster
                .take()
                .or_else(|| property_string(&["xds", "cluster_name"])),
            status,
            flags,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            latency_us: self.start_ns.map(|s| now.saturating_sub(s) as f64 / 1000.0),
        };
        let cap = self.config.0.max_clusters;
        with_vm(|vm| {
            vm.telemetry.record(&record);
            vm.metrics.request(&record, cap);
        });
    }
}
