//! The control plane's state: the checked configuration, the weights operators set, the
//! snapshots pushed through the xDS cache, and the logs the admin API shows.
//!
//! Every change (weights, reload) builds one new snapshot; the cache refuses inconsistent ones
//! before anything is sent. When a proxy NACKs, the cache rolls its group back to the last
//! snapshot it ACKed, and this state follows it back, so the next change starts from what
//! Envoy actually runs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use shadowplane_wire::{REPORT_CONTENT_TYPE, Report};
use shadowplane_xds::{Event, SnapshotCache, SyncState};

use crate::config::{self, Config, Role, Weights};
use crate::resources;
use crate::store::{Ingested, Store};

/// How many past snapshots are remembered to follow a rollback.
const HISTORY: usize = 32;
/// How many events the admin API keeps.
const EVENT_LOG: usize = 1024;

/// What went wrong with an admin request; the HTTP layer maps it to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such service (404).
    #[error("{0}")]
    NotFound(String),
    /// The token is missing or wrong (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The snapshot or canary was refused (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the API accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The body is not in a format the API reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The control plane failed (500); the request may be retried.
    #[error("{0}")]
    Internal(String),
}

/// Key of the persisted weights in the store.
const WEIGHTS_KEY: &str = "weights";

/// What survives a restart: the weights set by hand and the snapshot generation.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Persisted {
    generation: u64,
    weights: BTreeMap<String, BTreeMap<Role, u32>>,
}

impl Persisted {
    fn of(generation: u64, d: &Desired) -> Persisted {
        Persisted {
            generation,
            weights: d
                .weights
                .iter()
                .map(|(k, w)| (k.clone(), w.as_map()))
                .collect(),
        }
    }

    fn save(&self, store: &Store) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(self).map_err(|e| ApiError::Internal(e.to_string()))?;
        store
            .put_state(WEIGHTS_KEY, &bytes)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

#[derive(Clone)]
struct Desired {
    config: Config,
    weights: BTreeMap<String, Weights>,
}

struct Inner {
    config_path: PathBuf,
    current: Desired,
    version: String,
    generation: u64,
    history: VecDeque<(String, Desired)>,
}

struct LoggedEvent {
    seq: u64,
    at_ms: u64,
    event: Value,
}

/// The shared state behind the admin API and the xDS cache.
pub struct ControlPlane {
    cache: SnapshotCache,
    inner: Mutex<Inner>,
    events: Mutex<(u64, VecDeque<LoggedEvent>)>,
    store: Store,
    /// Per managed service, what the lifecycle engine last published.
    lifecycle: Mutex<BTreeMap<String, Value>>,
    /// Envoy's own per-cluster request times, from its stats sink.
    envoy_stats: Arc<crate::envoy_stats::EnvoyStats>,
    commands: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<crate::engine::Command>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; keep serving with the data as left.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ControlPlane {
    /// Builds the first snapshot from `config` and installs it in `cache`.
    pub fn new(
        cache: SnapshotCache,
        config_path: PathBuf,
        config: Config,
        store: Store,
    ) -> anyhow::Result<Arc<Self>> {
        let desired = Desired {
            weights: config
                .services
                .iter()
                .map(|s| (s.name.clone(), s.weights.clone()))
                .collect(),
            config,
        };
        // Weights set by hand before a restart win over the file's, for every service whose
        // roles are unchanged; versions go on from the last generation.
        let mut desired = desired;
        let persisted: Persisted = match store.state(WEIGHTS_KEY) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("stored weights unreadable, using the file's: {e}");
                Persisted::default()
            }),
            Ok(None) => Persisted::default(),
            Err(e) => anyhow::bail!("{e}"),
        };
        for s in desired
            .config
            .services
            .iter()
            .filter(|s| s.managed.is_none())
        {
            let roles: BTreeSet<Role> = s.groups.iter().map(|g| g.role).collect();
            if let Some(w) = persisted.weights.get(&s.name)
                && let Ok(w) = Weights::check(w, &roles)
            {
                desired.weights.insert(s.name.clone(), w);
            }
        }
        let generation = persisted.generation + 1;
        Persisted::of(generation, &desired)
            .save(&store)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let version = generation.to_string();
        let snap = resources::snapshot(&desired.config, &desired.weights, &version)?;
        cache.set_snapshot(&desired.config.node_cluster, snap)?;
        let cp = Arc::new(ControlPlane {
            cache,
            inner: Mutex::new(Inner {
                config_path,
                current: desired.clone(),
                version: version.clone(),
                generation,
                history: VecDeque::from([(version, desired)]),
            }),
            events: Mutex::new((0, VecDeque::new())),
            store,
            lifecycle: Mutex::new(BTreeMap::new()),
            envoy_stats: Arc::default(),
            commands: std::sync::OnceLock::new(),
        });
        Ok(cp)
    }

    /// Opens the store `config` names, with the window of its report interval.
    pub fn open_store(config: &Config) -> anyhow::Result<Store> {
        let window_ms = config
            .filter
            .as_ref()
            .map_or(shadowplane_wire::DEFAULT_REPORT_INTERVAL_MS, |f| {
                f.report_interval_ms
            });
        Store::open(&config.store_path, window_ms, config.retention_ms)
            .map_err(|e| anyhow::anyhow!("{e} ({})", config.store_path.display()))
    }

    /// Envoy's own per-cluster request times (the cold shadow's mirrored requests among them).
    pub fn envoy_stats(&self) -> &Arc<crate::envoy_stats::EnvoyStats> {
        &self.envoy_stats
    }

    /// The telemetry store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The xDS cache.
    pub fn cache(&self) -> &SnapshotCache {
        &self.cache
    }

    /// The configuration now in effect (managed services with their current groups).
    pub fn config(&self) -> Config {
        lock(&self.inner).current.config.clone()
    }

    /// The version of the snapshot in effect: the last pushed, or the one a NACK rolled the
    /// node group back to.
    pub fn version(&self) -> u64 {
        lock(&self.inner).version.parse().unwrap_or(0)
    }

    /// The Envoy node group this control plane serves.
    pub fn node_cluster(&self) -> String {
        lock(&self.inner).current.config.node_cluster.clone()
    }

    /// One service as now in effect (a managed one with its current groups).
    pub fn service(&self, name: &str) -> Option<config::Service> {
        lock(&self.inner)
            .current
            .config
            .services
            .iter()
            .find(|s| s.name == name)
            .cloned()
    }

    /// Sets a managed service's groups, weights and mirror share and pushes them; the
    /// lifecycle engine's only way to change what Envoy runs. Returns the new version.
    pub fn apply_managed(
        &self,
        service: &str,
        groups: Vec<config::Group>,
        weights: Weights,
        mirror_percent: u32,
    ) -> Result<u64, ApiError> {
        let mut inner = lock(&self.inner);
        let mut next = inner.current.clone();
        let svc = next
            .config
            .services
            .iter_mut()
            .find(|s| s.name == service && s.managed.is_some())
            .ok_or_else(|| ApiError::NotFound(format!("no managed service named \"{service}\"")))?;
        svc.groups = groups;
        svc.weights = weights.clone();
        svc.mirror_percent = mirror_percent;
        next.weights.insert(service.to_string(), weights);
        Self::push(&self.cache, &self.store, &mut inner, next, BTreeSet::new())?;
        Ok(inner.generation)
    }

    /// Publishes a managed service's lifecycle view for the status API.
    pub fn set_lifecycle_view(&self, service: &str, view: Value) {
        lock(&self.lifecycle).insert(service.to_string(), view);
    }

    /// Every managed service's lifecycle view.
    pub fn lifecycle_views(&self) -> Value {
        let views = lock(&self.lifecycle);
        json!({"services": views.values().cloned().collect::<Vec<_>>()})
    }

    /// Connects the lifecycle engine's command queue.
    pub fn set_commands(&self, tx: tokio::sync::mpsc::UnboundedSender<crate::engine::Command>) {
        let _ = self.commands.set(tx);
    }

    /// Sends an operator command to the lifecycle engine and waits for its answer.
    pub async fn command(&self, service: &str, op: crate::engine::Op) -> Result<Value, ApiError> {
        let managed = lock(&self.inner)
            .current
            .config
            .services
            .iter()
            .any(|s| s.name == service && s.managed.is_some());
        if !managed {
            return Err(ApiError::NotFound(format!(
                "no service named \"{service}\" with a lifecycle"
            )));
        }
        let tx = self
            .commands
            .get()
            .ok_or_else(|| ApiError::Internal("the lifecycle engine is not running".into()))?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        tx.send(crate::engine::Command {
            service: service.to_string(),
            op,
            reply,
        })
        .map_err(|_| ApiError::Internal("the lifecycle engine stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Internal("the lifecycle engine stopped".into()))?
    }

    /// Follows the cache's events: logs them and follows rollbacks. Runs until the cache is
    /// dropped.
    pub async fn follow_events(self: Arc<Self>) {
        let mut rx = self.cache.events();
        loop {
            match rx.recv().await {
                Ok(ev) => self.on_event(ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    self.log(json!({"event": "lagged", "missed": n}));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn on_event(&self, ev: Event) {
        let v = match &ev {
            Event::Connected { group, node } => {
                json!({"event": "connected", "group": group, "node": node})
            }
            Event::Disconnected { group, node } => {
                json!({"event": "disconnected", "group": group, "node": node})
            }
            Event::Acked {
                group,
                node,
                type_url,
                version,
            } => {
                json!({"event": "acked", "group": group, "node": node, "type_url": type_url, "version": version})
            }
            Event::Nacked {
                group,
                node,
                type_url,
                version,
                error,
            } => {
                json!({"event": "nacked", "group": group, "node": node, "type_url": type_url, "version": version, "error": error})
            }
            Event::RolledBack {
                group,
                from_version,
                to_version,
            } => {
                json!({"event": "rolled_back", "group": group, "from_version": from_version, "to_version": to_version})
            }
            Event::CanaryPromoted { group, version } => {
                json!({"event": "canary_promoted", "group": group, "version": version})
            }
            Event::Synced { group, version } => {
                json!({"event": "synced", "group": group, "version": version})
            }
        };
        if let Event::Nacked { .. } | Event::RolledBack { .. } = &ev {
            tracing::warn!(event = %v, "xds");
        } else {
            tracing::debug!(event = %v, "xds");
        }
        self.log(v);
        if let Event::RolledBack {
            group, to_version, ..
        } = ev
        {
            let mut inner = lock(&self.inner);
            if group != inner.current.config.node_cluster {
                return;
            }
            if let Some((_, d)) = inner.history.iter().find(|(v, _)| *v == to_version) {
                let d = d.clone();
                if let Err(e) = Persisted::of(inner.generation, &d).save(&self.store) {
                    tracing::warn!("cannot persist the rolled-back weights: {e}");
                }
                inner.current = d;
                inner.version = to_version;
            }
        }
    }

    /// Appends an event to the log `/v1/events` shows.
    pub fn log(&self, event: Value) {
        let mut log = lock(&self.events);
        log.0 += 1;
        let seq = log.0;
        log.1.push_back(LoggedEvent {
            seq,
            at_ms: now_ms(),
            event,
        });
        while log.1.len() > EVENT_LOG {
            log.1.pop_front();
        }
    }

    /// Events after `since` (a sequence number from an earlier answer).
    pub fn events(&self, since: u64) -> Value {
        let log = lock(&self.events);
        let events: Vec<Value> = log
            .1
            .iter()
            .filter(|e| e.seq > since)
            .map(|e| {
                let mut v = e.event.clone();
                v["seq"] = json!(e.seq);
                v["at_ms"] = json!(e.at_ms);
                v
            })
            .collect();
        json!({"last_seq": log.0, "events": events})
    }

    /// Sets a service's weights (percent per role, summing to 100) and pushes them, to the
    /// `canary` nodes first when it is not empty. Returns the new snapshot version.
    pub fn set_weights(
        &self,
        service: &str,
        raw: &BTreeMap<String, u32>,
        canary: BTreeSet<String>,
    ) -> Result<String, ApiError> {
        let mut inner = lock(&self.inner);
        let svc = inner
            .current
            .config
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ApiError::NotFound(format!("no service named \"{service}\"")))?;
        if svc.managed.is_some() {
            return Err(ApiError::Conflict(format!(
                "service \"{service}\" has a lifecycle, which sets its weights; use pause, \
                 resume, abort or promote"
            )));
        }
        let mut by_role = BTreeMap::new();
        for (k, w) in raw {
            let role = Role::parse(k).ok_or_else(|| {
                ApiError::BadRequest(format!("\"{k}\" is not a role (primary, shadow, standby)"))
            })?;
            by_role.insert(role, *w);
        }
        let roles: BTreeSet<Role> = svc.groups.iter().map(|g| g.role).collect();
        let weights = Weights::check(&by_role, &roles)
            .map_err(|m| ApiError::BadRequest(format!("weights: {m}")))?;
        let mut next = inner.current.clone();
        next.weights.insert(service.to_string(), weights);
        Self::push(&self.cache, &self.store, &mut inner, next, canary)
    }

    /// Re-reads the configuration file and pushes it (to the `canary` nodes first when not
    /// empty). Weights set by hand are kept for services whose roles did not change.
    pub fn reload(&self, canary: BTreeSet<String>) -> Result<String, ApiError> {
        let mut inner = lock(&self.inner);
        let config =
            config::load(&inner.config_path).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if config.node_cluster != inner.current.config.node_cluster
            || config.xds_address != inner.current.config.xds_address
            || config.admin_address != inner.current.config.admin_address
            || config.store_path != inner.current.config.store_path
            || config.retention_ms != inner.current.config.retention_ms
            || config.filter.as_ref().map(|f| f.report_interval_ms)
                != inner
                    .current
                    .config
                    .filter
                    .as_ref()
                    .map(|f| f.report_interval_ms)
        {
            return Err(ApiError::BadRequest(
                "node_cluster, xds, admin, store and the report interval cannot change on \
                 reload; restart instead"
                    .into(),
            ));
        }
        let mut config = config;
        // Managed services keep the groups, weights and mirror share the lifecycle set.
        for s in config.services.iter_mut().filter(|s| s.managed.is_some()) {
            if let Some(cur) = inner
                .current
                .config
                .services
                .iter()
                .find(|c| c.name == s.name && c.managed.is_some())
            {
                s.groups = cur.groups.clone();
                s.weights = cur.weights.clone();
                s.mirror_percent = cur.mirror_percent;
            } else {
                return Err(ApiError::BadRequest(format!(
                    "service \"{}\" gains a lifecycle on reload; restart to provision it",
                    s.name
                )));
            }
        }
        let mut weights = BTreeMap::new();
        for s in &config.services {
            let kept = inner.current.weights.get(&s.name).filter(|w| {
                let old: BTreeSet<Role> = w.iter().map(|(r, _)| r).collect();
                let new: BTreeSet<Role> = s.groups.iter().map(|g| g.role).collect();
                old == new
            });
            weights.insert(
                s.name.clone(),
                kept.cloned().unwrap_or_else(|| s.weights.clone()),
            );
        }
        Self::push(
            &self.cache,
            &self.store,
            &mut inner,
            Desired { config, weights },
            canary,
        )
    }

    fn push(
        cache: &SnapshotCache,
        store: &Store,
        inner: &mut Inner,
        next: Desired,
        canary: BTreeSet<String>,
    ) -> Result<String, ApiError> {
        let version = (inner.generation + 1).to_string();
        let snap = resources::snapshot(&next.config, &next.weights, &version)
            .map_err(|e| ApiError::Conflict(format!("snapshot refused: {e}")))?;
        let group = next.config.node_cluster.clone();
        // Persisted before it is sent: a crash right after the push restarts on these weights,
        // never on older ones Envoy has already left.
        Persisted::of(inner.generation + 1, &next).save(store)?;
        let sent = if canary.is_empty() {
            cache.set_snapshot(&group, snap)
        } else {
            cache.set_snapshot_canary(&group, snap, canary)
        };
        if let Err(e) = sent {
            if let Err(e) = Persisted::of(inner.generation, &inner.current).save(store) {
                tracing::warn!("cannot restore the persisted weights: {e}");
            }
            return Err(ApiError::Conflict(e.to_string()));
        }
        inner.generation += 1;
        inner.version = version.clone();
        inner.current = next.clone();
        inner.history.push_back((version.clone(), next));
        while inner.history.len() > HISTORY {
            inner.history.pop_front();
        }
        Ok(version)
    }

    /// The services with their groups and current weights.
    pub fn services(&self) -> Value {
        let inner = lock(&self.inner);
        let services: Vec<Value> = inner
            .current
            .config
            .services
            .iter()
            .map(|s| {
                let w = inner.current.weights.get(&s.name).unwrap_or(&s.weights);
                json!({
                    "name": s.name,
                    "listener": s.listener,
                    "groups": s.groups.iter().map(|g| json!({
                        "name": g.name,
                        "role": g.role,
                        "weight": w.get(g.role),
                        "endpoints": g.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"version": inner.version, "services": services})
    }

    /// Per-node sync status of every node group.
    pub fn status(&self) -> Value {
        let version = lock(&self.inner).version.clone();
        let groups: Vec<Value> = self
            .cache
            .status()
            .into_iter()
            .map(|g| {
                json!({
                    "group": g.group,
                    "version": g.version,
                    "canary": g.canary.map(|c| format!("{c:?}")),
                    "nodes": g.nodes.into_iter().map(|n| json!({
                        "node": n.node_id,
                        "state": match n.state {
                            SyncState::Synced => "SYNCED",
                            SyncState::Stale => "STALE",
                            SyncState::Nacked => "NACKED",
                        },
                        "connected": n.connected,
                        "target_version": n.target_version,
                        "error": n.last_nack.as_ref().map(|k| k.error.clone()),
                        "last_nack": n.last_nack.map(|k| json!({
                            "type_url": k.type_url, "version": k.version, "error": k.error, "at_ms": ms(k.at),
                        })),
                        "last_ack_at_ms": n.last_ack_at.map(ms),
                        "last_sent_at_ms": n.last_sent_at.map(ms),
                        "types": n.types.into_iter().map(|t| json!({
                            "type_url": t.type_url,
                            "last_sent_version": t.last_sent_version,
                            "last_sent_nonce": t.last_sent_nonce,
                            "last_acked_version": t.last_acked_version,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"version": version, "groups": groups})
    }

    /// The current snapshot, rendered for people.
    pub fn render_snapshot(&self) -> String {
        let group = lock(&self.inner).current.config.node_cluster.clone();
        match self.cache.snapshot(&group) {
            Some(s) => resources::render(&s),
            None => String::new(),
        }
    }

    /// Takes one telemetry report from a filter: checks the token and the content type,
    /// decodes and validates it, and stores it (once, however often the filter resends it).
    /// Returns only after the report is committed, so an acknowledged report is never lost.
    /// Every rejection is counted and stores nothing else.
    pub fn ingest(
        &self,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Ingested, ApiError> {
        let token = lock(&self.inner)
            .current
            .config
            .filter
            .as_ref()
            .and_then(|f| f.auth_token.clone());
        if let Some(t) = token {
            let want = format!("Bearer {t}");
            if authorization != Some(want.as_str()) {
                self.count("rejected_unauthorized");
                return Err(ApiError::Unauthorized(
                    "missing or wrong bearer token".into(),
                ));
            }
        }
        if content_type != Some(REPORT_CONTENT_TYPE) {
            self.count("rejected_content_type");
            return Err(ApiError::UnsupportedMediaType(format!(
                "reports are {REPORT_CONTENT_TYPE}, not {}",
                content_type.unwrap_or("(none)")
            )));
        }
        let report = Report::decode(body).map_err(|e| {
            self.count("rejected_malformed");
            ApiError::BadRequest(format!("report: {e}"))
        })?;
        self.store.ingest(&report, now_ms()).map_err(|e| match e {
            crate::store::StoreError::Unmergeable { .. } => {
                self.count("rejected_malformed");
                ApiError::BadRequest(e.to_string())
            }
            e => ApiError::Internal(e.to_string()),
        })
    }

    /// Counts a rejected report.
    pub fn count(&self, what: &str) {
        if let Err(e) = self.store.count(what, 1) {
            tracing::warn!("{e}");
        }
    }

    /// Counters and per-cluster totals of the stored telemetry.
    pub fn telemetry(&self) -> Result<Value, ApiError> {
        let internal = |e: crate::store::StoreError| ApiError::Internal(e.to_string());
        let counters: serde_json::Map<String, Value> = self
            .store
            .counters()
            .map_err(internal)?
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        let clusters: serde_json::Map<String, Value> = self
            .store
            .totals()
            .map_err(internal)?
            .into_iter()
            .map(|(c, windows, s)| (c, json!({"windows": windows, "stats": stats_json(&s)})))
            .collect();
        Ok(json!({"counters": counters, "clusters": clusters}))
    }

    /// The stored system-metrics samples of `group` from `since_ms` on.
    pub fn system_samples(&self, group: &str, since_ms: u64) -> Result<Value, ApiError> {
        let rows = self
            .store
            .system(group, since_ms)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let samples: Vec<Value> = rows
            .into_iter()
            .filter_map(|(_, json)| serde_json::from_slice(&json).ok())
            .collect();
        Ok(json!({"group": group, "samples": samples}))
    }

    /// The stored windows of `cluster` from `since_ms` on.
    pub fn telemetry_windows(&self, cluster: &str, since_ms: u64) -> Result<Value, ApiError> {
        let windows = self
            .store
            .windows(cluster, since_ms)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(json!({
            "cluster": cluster,
            "windows": windows.iter().map(|w| json!({
                "start_ms": w.start_ms,
                "end_ms": w.end_ms,
                "reports": w.reports,
                "stats": stats_json(&w.stats),
            })).collect::<Vec<_>>(),
        }))
    }
}

fn stats_json(s: &shadowplane_wire::ClusterStats) -> Value {
    let q = |p: f64| {
        s.latency
            .quantile(p)
            .map(|us| (us / 1000.0 * 1000.0).round() / 1000.0)
    };
    json!({
        "requests": s.requests,
        "responses_2xx": s.responses_2xx,
        "responses_3xx": s.responses_3xx,
        "responses_4xx": s.responses_4xx,
        "responses_5xx": s.responses_5xx,
        "no_response": s.no_response,
        "local_resets": s.local_resets,
        "upstream_resets": s.upstream_resets,
        "timeouts": s.timeouts,
        "request_bytes": s.request_bytes,
        "response_bytes": s.response_bytes,
        "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)},
    })
}
