//! The one module that talks to Envoy: it turns the callbacks the filter exports
//! ([`exports`]) into calls on the plain-Rust [`Router`], [`Attribution`] and [`Telemetry`],
//! and their answers into headers, callouts and metrics, through [`abi`].
//!
//! Envoy runs one Wasm VM per worker thread. A VM holds one root context per active
//! configuration (during an update the old and the new one live side by side, and listeners
//! that share a VM each have their own), so per-worker telemetry lives in one [`Vm`] that all
//! root contexts share, while each root context carries its own [`Config`]: a stream learns its
//! root when Envoy creates its context and keeps that configuration to the end.
//!
//! What a request costs is the point of this layout (README.md, Overhead): per ordinary request
//! the filter makes two clock reads, sets the routing header, reads `:status` once at the end,
//! and records one histogram sample; Envoy calls it at stream creation, at the request headers,
//! for each body chunk and at the end. Everything else (counters, reports) happens per tick.

mod abi;
mod exports;

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

use rustc_hash::FxHashMap;
use shadowplane_wire::{RoutingMode, SessionKey, ValidConfig, ValidTelemetry};

use crate::attribution::{Attribution, Mode};
use crate::callout::report_headers;
use crate::routing::{Router, cookie_value};
use crate::streams::Streams;
use crate::telemetry::{
    DeliveryStats, NO_CLUSTER, OVERFLOW_CLUSTER, Outgoing, RequestRecord, Settings, Telemetry,
    status_code,
};
use abi::{LogLevel, Map, MetricKind};

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm::new());
}

/// Runs `f` on the VM's state. Callbacks never nest (the host calls back into the VM only to
/// allocate, which does not touch it), but a failed borrow must not trap the VM: it skips the
/// work instead.
fn with_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

/// Roots that neither ticked nor started a stream for this long are gone (Envoy tells the VM
/// about a root's end only through callbacks the filter does not export, to save one call per
/// request).
const ROOT_IDLE_MS: u64 = 60_000;

/// Per-VM (per-worker) state.
struct Vm {
    roots: Vec<Root>,
    streams: Streams<Stream>,
    telemetry: Option<Telemetry>,
    /// The newest configuration's collector.
    target: Option<ValidTelemetry>,
    /// Callout token to report sequence.
    callouts: FxHashMap<u32, u64>,
    metrics: Metrics,
    rng: fastrand::Rng,
    /// Set after the first failed delivery is logged, cleared on the next success, so an
    /// outage logs one line instead of one per second.
    outage_logged: bool,
}

/// A root context: one plugin configuration.
struct Root {
    id: u32,
    config: Option<Rc<Config>>,
    last_tick_ms: u64,
}

/// A checked configuration and what the hot path needs from it, precomputed.
struct Config {
    router: Router,
    route_header: String,
    max_clusters: usize,
    /// The Envoy metrics slot of each group, in the router's order.
    group_slots: Vec<usize>,
    attribution: Cell<Attribution>,
    /// When a stream last started under this configuration (ms).
    last_used_ms: Cell<u64>,
}

/// One HTTP stream.
struct Stream {
    config: Rc<Config>,
    /// Index of the group the filter routed the request to.
    group: Option<usize>,
    start_ns: u64,
    /// Body bytes, summed from the body callbacks' sizes: no hostcall.
    request_bytes: u64,
    response_bytes: u64,
}

/// Envoy metric ids, defined on first use.
#[derive(Default)]
struct Metrics {
    reports_sent: Option<u32>,
    reports_failed: Option<u32>,
    reports_dropped: Option<u32>,
    reports_buffered: Option<u32>,
    streams_active: Option<u32>,
    /// By cluster name, in order of definition; at most `max_clusters` and the overflow one.
    groups: Vec<GroupMetrics>,
    last: DeliveryStats,
}

struct GroupMetrics {
    name: String,
    rq_total: Option<u32>,
    rq_error: Option<u32>,
    rq_time_ms: Option<u32>,
    /// Counts not yet added to Envoy's counters: counters are flushed per tick rather than
    /// per request, which saves two hostcalls on every request.
    pending_total: u64,
    pending_error: u64,
}

fn bump(id: Option<u32>, by: u64) {
    if let (Some(id), Ok(by)) = (id, i64::try_from(by))
        && by > 0
    {
        abi::increment_metric(id, by);
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
        let counter = |n| abi::define_metric(MetricKind::Counter, n);
        self.reports_sent = counter("shadowplane.reports_sent");
        self.reports_failed = counter("shadowplane.reports_failed");
        self.reports_dropped = counter("shadowplane.reports_dropped");
        self.reports_buffered =
            abi::define_metric(MetricKind::Gauge, "shadowplane.reports_buffered");
        self.streams_active = abi::define_metric(MetricKind::Gauge, "shadowplane.streams_active");
    }

    /// The slot of cluster `name`'s metrics, defined on first use; past `cap` clusters, the
    /// overflow slot.
    fn slot(&mut self, name: &str, cap: usize) -> usize {
        let find = |groups: &[GroupMetrics], name: &str| groups.iter().position(|g| g.name == name);
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
        self.groups.push(GroupMetrics {
            name: name.to_string(),
            rq_total: abi::define_metric(MetricKind::Counter, &format!("{p}.rq_total")),
            rq_error: abi::define_metric(MetricKind::Counter, &format!("{p}.rq_error")),
            rq_time_ms: abi::define_metric(MetricKind::Histogram, &format!("{p}.rq_time_ms")),
            pending_total: 0,
            pending_error: 0,
        });
        self.groups.len() - 1
    }

    fn request(&mut self, slot: usize, status: Option<u32>, latency_us: Option<f64>) {
        let Some(g) = self.groups.get_mut(slot) else {
            return;
        };
        g.pending_total += 1;
        if !matches!(status, Some(100..=499)) {
            g.pending_error += 1;
        }
        // Histograms take samples one by one.
        if let (Some(id), Some(us)) = (g.rq_time_ms, latency_us) {
            abi::record_metric(id, (us / 1000.0) as u64);
        }
    }

    /// Adds the counts gathered since the last tick to Envoy's counters.
    fn flush(&mut self, streams: usize) {
        for g in &mut self.groups {
            bump(g.rq_total, std::mem::take(&mut g.pending_total));
            bump(g.rq_error, std::mem::take(&mut g.pending_error));
        }
        if let Some(id) = self.streams_active {
            abi::record_metric(id, streams as u64);
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
            abi::record_metric(id, buffered as u64);
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

fn random_seed() -> u64 {
    RandomState::new().build_hasher().finish()
}

fn property_string(path: &str) -> Option<String> {
    abi::property(path).and_then(|b| String::from_utf8(b).ok())
}

/// Integer attributes arrive as 8 little-endian bytes.
fn property_u64(path: &str) -> Option<u64> {
    let b: [u8; 8] = abi::property(path)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The response code from `:status`; `None` when there was no response (a reset).
fn response_status() -> Option<u32> {
    abi::header_with(Map::Response, ":status", status_code).flatten()
}

impl Vm {
    fn new() -> Self {
        Self {
            roots: Vec::new(),
            streams: Streams::new(),
            telemetry: None,
            target: None,
            callouts: FxHashMap::default(),
            metrics: Metrics::default(),
            rng: fastrand::Rng::with_seed(random_seed()),
            outage_logged: false,
        }
    }

    /// Root `id`, added when new.
    fn root_mut(&mut self, id: u32) -> Option<&mut Root> {
        if !self.roots.iter().any(|r| r.id == id) {
            self.roots.push(Root {
                id,
                config: None,
                last_tick_ms: abi::now_ns() / 1_000_000,
            });
        }
        self.roots.iter_mut().find(|r| r.id == id)
    }

    /// The configuration of root `id`, or the newest one when Envoy names a root the VM does
    /// not know (it forgot it as idle): a stream is better routed by a current configuration
    /// than not at all.
    fn config_of(&self, id: u32) -> Option<Rc<Config>> {
        self.roots
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.config.clone())
            .or_else(|| self.roots.iter().rev().find_map(|r| r.config.clone()))
    }

    fn forget_idle_roots(&mut self, now_ms: u64) {
        self.roots.retain(|r| {
            let used = r.config.as_ref().map_or(0, |c| c.last_used_ms.get());
            now_ms.saturating_sub(r.last_tick_ms.max(used)) < ROOT_IDLE_MS
        });
    }

    fn configure(&mut self, root_id: u32, config: ValidConfig) {
        let now_ms = abi::now_ns() / 1_000_000;
        let s = settings(&config);
        match &mut self.telemetry {
            Some(t) => t.reconfigure(s.clone()),
            None => {
                let node = property_string("node\0id")
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "unknown".to_string());
                // Envoy exposes no worker index to Wasm; the identity only has to tell this
                // VM's reports apart from every other VM's.
                let worker = format!("{:016x}", random_seed() ^ abi::now_ns());
                self.metrics.init();
                self.telemetry = Some(Telemetry::new(node, worker, s.clone(), now_ms));
            }
        }
        self.target = config.telemetry.clone();
        let router = Router::new(&config);
        let group_slots = router
            .groups()
            .iter()
            .map(|g| self.metrics.slot(g, config.max_clusters))
            .collect();
        let Some(root) = self.root_mut(root_id) else {
            return;
        };
        root.last_tick_ms = now_ms;
        root.config = Some(Rc::new(Config {
            router,
            route_header: config.route_header.clone(),
            max_clusters: config.max_clusters,
            group_slots,
            attribution: Cell::new(Attribution::new()),
            last_used_ms: Cell::new(now_ms),
        }));
        // Tick faster than the window so that a window closes within a quarter interval of due.
        let tick = (s.interval_ms / 4).clamp(50, 1000);
        abi::set_tick_period(u32::try_from(tick).unwrap_or(1000));
    }

    /// A report to send now, if one is due, with its target.
    fn due(&mut self, now_ms: u64) -> Option<(ValidTelemetry, Outgoing)> {
        let target = self.target.clone()?;
        let out = self.telemetry.as_mut()?.tick(now_ms)?;
        Some((target, out))
    }

    fn publish_delivery(&mut self) {
        if let Some(t) = &self.telemetry {
            self.metrics.delivery(t.stats(), t.buffered());
        }
    }

    fn delivery_failed(&mut self, sequence: u64, why: &str) {
        if let Some(t) = &mut self.telemetry {
            t.failed(sequence);
        }
        if !self.outage_logged {
            self.outage_logged = true;
            abi::log(LogLevel::Warn, why);
        }
    }
}

/// Sends a report. Outside any borrow of the VM: Envoy may answer a callout before
/// `proxy_http_call` returns.
fn send(target: &ValidTelemetry, out: Outgoing) {
    let timeout = u32::try_from(target.timeout_ms).unwrap_or(u32::MAX);
    match abi::http_call(&target.cluster, &report_headers(target), &out.body, timeout) {
        Ok(token) => {
            with_vm(|vm| vm.callouts.insert(token, out.sequence));
        }
        Err(status) => {
            let why = format!(
                "shadowplane: cannot send reports to cluster \"{}\": {status:?}",
                target.cluster
            );
            with_vm(|vm| vm.delivery_failed(out.sequence, &why));
        }
    }
    with_vm(Vm::publish_delivery);
}

// The callbacks, called by `exports`.

fn on_context_create(context_id: u32, parent_id: u32) {
    with_vm(|vm| {
        if parent_id == 0 {
            vm.root_mut(context_id);
            return;
        }
        if let Some(config) = vm.config_of(parent_id) {
            vm.streams.insert(
                context_id,
                Stream {
                    config,
                    group: None,
                    start_ns: 0,
                    request_bytes: 0,
                    response_bytes: 0,
                },
            );
        }
    });
}

fn on_configure(root_id: u32, size: usize) -> bool {
    let raw = abi::plugin_configuration(size).unwrap_or_default();
    match ValidConfig::from_json(&raw) {
        Ok(config) => with_vm(|vm| vm.configure(root_id, config)).is_some(),
        Err(e) => {
            abi::log(LogLevel::Error, &format!("shadowplane: {e}"));
            false
        }
    }
}

fn on_tick(root_id: u32) {
    let now_ms = abi::now_ns() / 1_000_000;
    let due = with_vm(|vm| {
        if let Some(root) = vm.root_mut(root_id) {
            root.last_tick_ms = now_ms;
        }
        vm.forget_idle_roots(now_ms);
        vm.metrics.flush(vm.streams.len());
        vm.publish_delivery();
        vm.due(now_ms)
    })
    .flatten();
    if let Some((target, out)) = due {
        send(&target, out);
    }
}

fn on_http_call_response(token: u32) {
    let Some(sequence) = with_vm(|vm| vm.callouts.remove(&token)).flatten() else {
        return;
    };
    let status = abi::header(Map::CallResponse, ":status");
    let ok = status
        .as_deref()
        .is_some_and(|s| s.len() == 3 && s[0] == b'2');
    let now_ms = abi::now_ns() / 1_000_000;
    let next = with_vm(|vm| {
        if ok {
            vm.outage_logged = false;
            let next = vm.telemetry.as_mut()?.delivered(sequence, now_ms)?;
            Some((vm.target.clone()?, next))
        } else {
            let shown = status.as_deref().map_or_else(
                || "no response".to_string(),
                |s| String::from_utf8_lossy(s).into_owned(),
            );
            let why = format!("shadowplane: report not accepted by the collector: {shown}");
            vm.delivery_failed(sequence, &why);
            None
        }
    })
    .flatten();
    match next {
        Some((target, out)) => send(&target, out),
        None => {
            with_vm(Vm::publish_delivery);
        }
    }
}

/// The session key's bytes: a key that is not UTF-8 is still a key, and stays sticky.
fn session_key(key: &SessionKey) -> Option<Vec<u8>> {
    match key {
        SessionKey::Header(h) => abi::header(Map::Request, h),
        SessionKey::Cookie(c) => {
            let header = abi::header(Map::Request, "cookie")?;
            // Cookie names are tokens (ASCII), so a lossy view finds them; a value with
            // bytes outside UTF-8 maps to the same replacement text every time.
            cookie_value(&String::from_utf8_lossy(&header), c).map(|v| v.as_bytes().to_vec())
        }
    }
}

fn on_request_headers(context_id: u32) {
    let start_ns = abi::now_ns();
    // One borrow for the whole callback: the hostcalls made inside it only call back into the
    // VM to allocate, which does not touch the VM's state.
    with_vm(|vm| {
        let r = vm.rng.u64(..);
        let Some(stream) = vm.streams.get_mut(context_id) else {
            return;
        };
        stream.start_ns = start_ns;
        let config = &stream.config;
        config.last_used_ms.set(start_ns / 1_000_000);
        let router = &config.router;
        let sticky = match (router.mode(), router.session_key()) {
            (RoutingMode::Sticky, Some(key)) => session_key(key).filter(|k| !k.is_empty()),
            _ => None,
        };
        let group = match sticky {
            Some(key) => router.pick_sticky(&key),
            None => router.pick_random(r),
        };
        // Setting a request header makes Envoy clear its route cache, so the route's
        // `cluster_header` sees the group.
        abi::set_header(Map::Request, &config.route_header, router.name(group));
        stream.group = Some(group);
    });
}

fn on_request_body(context_id: u32, size: usize) {
    with_vm(|vm| {
        if let Some(s) = vm.streams.get_mut(context_id) {
            s.request_bytes = s.request_bytes.saturating_add(size as u64);
        }
    });
}

fn on_response_body(context_id: u32, size: usize) {
    with_vm(|vm| {
        if let Some(s) = vm.streams.get_mut(context_id) {
            s.response_bytes = s.response_bytes.saturating_add(size as u64);
        }
    });
}

fn on_log(context_id: u32) {
    let end_ns = abi::now_ns();
    // One borrow, as in `on_request_headers`.
    with_vm(|vm| {
        let Some(stream) = vm.streams.remove(context_id) else {
            return;
        };
        let status = response_status();
        // The flags only tell resets and timeouts apart, and those end in a 5xx or no
        // response: skip the attribute (a hostcall and an allocation) for every ordinary
        // response.
        let flags = match status {
            Some(100..=499) => 0,
            _ => property_u64("response\0flags").unwrap_or(0),
        };
        let config = &stream.config;
        let chosen = stream.group.map(|g| config.router.name(g));
        let mut attribution = config.attribution.get();
        let actual = attribution
            .wants_cluster(chosen)
            .then(|| property_string("xds\0cluster_name"));
        let resolved = attribution.resolve(chosen, actual.as_ref().map(|a| a.as_deref()));
        let mode = attribution.mode();
        config.attribution.set(attribution);
        if resolved.switched {
            abi::log(
                LogLevel::Warn,
                &format!(
                    "shadowplane: the route table sent a request for group \"{}\" to {}; this \
                     configuration now reads the cluster of every request (slower)",
                    chosen.unwrap_or_default(),
                    resolved
                        .cluster
                        .map_or_else(|| "no cluster".to_string(), |c| format!("\"{c}\"")),
                ),
            );
        }
        let latency_us =
            (stream.start_ns > 0).then(|| end_ns.saturating_sub(stream.start_ns) as f64 / 1000.0);
        let record = RequestRecord {
            cluster: resolved.cluster,
            status,
            flags,
            request_bytes: stream.request_bytes,
            response_bytes: stream.response_bytes,
            latency_us,
        };
        if let Some(t) = &mut vm.telemetry {
            t.record(&record);
        }
        // The group's slot was found at configure time; only a request counted elsewhere
        // looks its cluster up.
        let slot = match (mode, stream.group) {
            (Mode::Trusting, Some(g)) if resolved.cluster == chosen => {
                config.group_slots.get(g).copied()
            }
            _ => None,
        };
        let slot = slot.unwrap_or_else(|| {
            vm.metrics
                .slot(resolved.cluster.unwrap_or(NO_CLUSTER), config.max_clusters)
        });
        vm.metrics.request(slot, status, latency_us);
    });
}
