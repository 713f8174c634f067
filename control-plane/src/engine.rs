//! The migration engine: runs the shadow lifecycle of every managed service against the real
//! world. It provisions the groups, feeds each group's models from the stored telemetry and
//! the provisioner's system metrics, turns the models' verdicts and the comparisons into
//! [`lifecycle::Input`]s, persists the machine's state before acting, and carries out its
//! [`lifecycle::Action`]s: xDS pushes through [`ControlPlane::apply_managed`], the role swap
//! through the provisioner.
//!
//! The decisions stay in the pure [`lifecycle::step`]; this module is the effects around it.
//! Models are not persisted: after a restart they are rebuilt from the stored windows, which
//! the store keeps for its retention.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shadowplane_model::cost::CostModel;
use shadowplane_model::rootcause::{self, CauseKind, Signal};
use shadowplane_model::trigger::{self, GroupForecasts, Trigger};
use shadowplane_model::{Detector, Forecast, Forecaster};
use shadowplane_wire::ClusterStats;
use tokio::sync::{mpsc, oneshot};

use crate::compare::{self, Verdict as CompareVerdict};
use crate::config::{Config, Group, Managed, Role, Service, Weights};
use crate::lifecycle::{self, Action, Input, Phase};
use crate::provision::{GroupHandle, GroupSpec, InstanceState, Provisioner, RecordedConfig};
use crate::state::{ApiError, ControlPlane};
use crate::store::Store;

/// Store key prefix of a service's persisted engine state.
const STATE_PREFIX: &str = "lifecycle/";
/// Points of history kept per group for root causes and the status view.
const RECENT: usize = 240;
/// Anomalies shown in the status.
const ANOMALIES: usize = 10;
/// Windows newer than this many report intervals may still get reports from other workers and
/// Envoys; the models wait for them.
const SETTLE_WINDOWS: u64 = 2;
/// A primary whose last window failed at least this share of at least `FAILED_MIN` requests
/// failed hard (not a prediction).
const FAILED_SHARE: f64 = 0.5;
const FAILED_MIN: u64 = 10;
/// The error-rate forecaster is fed the rate over the newest windows that hold at least this
/// many requests together (at most [`ERROR_POOL_WINDOWS`] of them): at 40 requests a window,
/// one failed request is a 2.5% "error rate", which would trip any SLO by chance. 2,000
/// requests put a service failing 0.4% (8 expected) 3.5 standard deviations below a 1% SLO
/// (20); with 500 (2 expected, 5 at the SLO) a noisy but normal service crossed it by chance.
const ERROR_POOL_REQUESTS: u64 = 2000;
const ERROR_POOL_WINDOWS: usize = 60;
/// Likewise the latency models are fed the p99 of the newest windows that hold at least this
/// many requests together (their sketches merge exactly), at most [`LATENCY_POOL_WINDOWS`]:
/// the p99 of 40 requests is their second slowest, noise that hides a slow trend.
const LATENCY_POOL_REQUESTS: u64 = 200;
const LATENCY_POOL_WINDOWS: usize = 10;
/// How long the previous run's instances are kept while no Envoy has reconnected.
const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// An operator's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Stop moving; weights stay.
    Pause,
    /// Go on.
    Resume,
    /// Back to the primary.
    Abort,
    /// Skip ahead to the next step now (from watching: start a migration).
    Promote,
}

/// An operator's request for one service, with where to answer.
pub struct Command {
    /// The service.
    pub service: String,
    /// What to do.
    pub op: Op,
    /// The lifecycle view after the command, or why it was refused.
    pub reply: oneshot::Sender<Result<Value, ApiError>>,
}

/// What survives a restart, per service.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Persisted {
    lifecycle: lifecycle::State,
    /// The number of the last group created (`SERVICE-N`).
    last_group: u64,
    primary: String,
    shadow: Option<String>,
    /// A released primary waiting to be stopped once Envoy no longer routes to it.
    releasing: Option<String>,
    /// Recorded configuration by group.
    configs: BTreeMap<String, RecordedConfig>,
    /// The snapshot version the pending push went out as.
    pushed_version: Option<u64>,
    last_decision: Option<Value>,
    anomalies: VecDeque<Value>,
    /// The instances' process ids by group, as last seen: after a restart, the processes of
    /// the previous run are stopped once Envoy has moved to the new ones.
    #[serde(default)]
    pids: BTreeMap<String, Vec<u32>>,
}

/// One point of a group's history.
#[derive(Debug, Clone, Copy, Default)]
struct Point {
    time: i64,
    p99_ms: f64,
    error_rate: f64,
    rps: f64,
    deviation: f64,
    cpu: f64,
    rss: f64,
    faults: f64,
    disk: f64,
    net: f64,
    timeouts: f64,
    resets: f64,
    /// From Envoy's upstream samples (the group got mirrored requests only), not the filter.
    mirrored: bool,
}

/// A group's models, fed from its telemetry windows.
struct Models {
    /// The anomaly detector; its forecaster (chosen on the next point) is also the trigger's
    /// first p99 forecast.
    latency: Detector,
    /// The trigger's second p99 forecast, chosen (and Holt-Winters fitted) on its errors over
    /// `model.select_horizon`: on a creep under noise it scores the model that extrapolates,
    /// where the one-step choice keeps the one that tracks the noise. The graver counts.
    p99: Forecaster,
    errors: Forecaster,
    cost: Option<CostModel>,
    trigger: Trigger,
    recent: VecDeque<Point>,
    /// Start of the last window fed, ms.
    fed_until_ms: u64,
    /// When the last system sample was stored (one per window is enough).
    sys_stored_ms: u64,
    /// Flush time of the newest Envoy upstream sample stored.
    upstream_stored_ms: u64,
    /// (requests, failed) of the newest filter windows, newest last, for the pooled error rate.
    error_pool: VecDeque<(u64, u64)>,
    /// The (failed, requests) behind the error model's newest point.
    error_counts: Option<(u64, u64)>,
    /// Latency sketches of the newest filter windows, newest last, for the pooled p99.
    latency_pool: VecDeque<shadowplane_wire::LatencySketch>,
    /// The pooled distribution behind the latency model's newest point, (ms, count), empty
    /// when that point came from Envoy's statistics.
    latency_tail: Vec<(f64, u64)>,
}

/// Adds a window's latency sketch to `pool` and returns the p99 (ms) of the newest windows
/// that reach [`LATENCY_POOL_REQUESTS`] together, merged, with that merged distribution as
/// (ms, count) pairs.
fn pooled_p99_ms(
    pool: &mut VecDeque<shadowplane_wire::LatencySketch>,
    latency: &shadowplane_wire::LatencySketch,
) -> Option<(f64, Vec<(f64, u64)>)> {
    pool.push_back(latency.clone());
    while pool.len() > LATENCY_POOL_WINDOWS {
        pool.pop_front();
    }
    let mut merged = shadowplane_wire::LatencySketch::new();
    for sketch in pool.iter().rev() {
        // Stored windows each decode, so only counts near u64::MAX fail here: stop pooling.
        if merged.merge(sketch).is_err() {
            break;
        }
        if merged.count() >= LATENCY_POOL_REQUESTS {
            break;
        }
    }
    let p99 = merged.quantile(0.99)? / 1000.0;
    Some((
        p99,
        merged.buckets().map(|(us, c)| (us / 1000.0, c)).collect(),
    ))
}

/// Adds a window (requests, failed) to `pool` and returns the pooled error rate, failed over
/// requests of the newest windows that reach [`ERROR_POOL_REQUESTS`] together, with those
/// counts (failed, requests).
fn pooled_error_rate(
    pool: &mut VecDeque<(u64, u64)>,
    requests: u64,
    failed: u64,
) -> (f64, (u64, u64)) {
    pool.push_back((requests, failed));
    while pool.len() > ERROR_POOL_WINDOWS {
        pool.pop_front();
    }
    let (mut rq, mut bad) = (0u64, 0u64);
    for (r, f) in pool.iter().rev() {
        rq += r;
        bad += f;
        if rq >= ERROR_POOL_REQUESTS {
            break;
        }
    }
    let rate = if rq == 0 { 0.0 } else { bad as f64 / rq as f64 };
    (rate, (bad, rq))
}

impl Models {
    fn new(m: &Managed) -> Models {
        let detector = m.detector.clone();
        let cost = m.prices.clone().map(|p| CostModel::new(p, m.model.clone()));
        Models {
            latency: Detector::new(detector, 0),
            p99: Forecaster::new(m.model.clone(), 0),
            errors: Forecaster::new(m.model.clone(), 0),
            cost,
            trigger: Trigger::new(m.trigger.clone()),
            recent: VecDeque::new(),
            fed_until_ms: 0,
            sys_stored_ms: 0,
            upstream_stored_ms: 0,
            error_pool: VecDeque::new(),
            error_counts: None,
            latency_pool: VecDeque::new(),
            latency_tail: Vec::new(),
        }
    }
}

struct Svc {
    state: Persisted,
    models: BTreeMap<String, Models>,
    /// Processes of the previous run (program, pid), stopped once Envoy has the new endpoints.
    orphans: Vec<(String, u32)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn group_name(service: &str, n: u64) -> String {
    format!("{service}-{n}")
}

fn load(store: &Store, service: &str) -> anyhow::Result<Option<Persisted>> {
    match store.state(&format!("{STATE_PREFIX}{service}"))? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("the stored lifecycle of service \"{service}\" is unreadable: {e}")
        })?)),
        None => Ok(None),
    }
}

fn save(store: &Store, service: &str, p: &Persisted) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(p)?;
    store.put_state(&format!("{STATE_PREFIX}{service}"), &bytes)?;
    Ok(())
}

/// The engine before the control plane exists: groups provisioned, state loaded.
pub struct Engine {
    provisioner: Arc<dyn Provisioner>,
    services: BTreeMap<String, Svc>,
    window_ms: u64,
    started: std::time::Instant,
}

impl Engine {
    /// Loads or creates the state of every managed service in `config`, provisions its groups
    /// (adopting those that run already) and fills in the service's groups, weights and mirror
    /// share, so the first snapshot is what the lifecycle had when it last ran.
    pub async fn prepare(
        config: &mut Config,
        store: &Store,
        provisioner: Arc<dyn Provisioner>,
    ) -> anyhow::Result<Engine> {
        let window_ms = config
            .filter
            .as_ref()
            .map_or(shadowplane_wire::DEFAULT_REPORT_INTERVAL_MS, |f| {
                f.report_interval_ms
            });
        let mut services = BTreeMap::new();
        let now = now_ms();
        for service in config.services.iter_mut() {
            let Some(m) = service.managed.clone() else {
                continue;
            };
            let state = match load(store, &service.name)? {
                Some(p) => {
                    tracing::info!(service = %service.name, phase = ?p.lifecycle.phase, shadow = p.lifecycle.shadow_percent, "resuming the lifecycle");
                    p
                }
                None => {
                    let primary = group_name(&service.name, 1);
                    let shadow = group_name(&service.name, 2);
                    let shadow_config = crate::provision::mirror(&m.group, m.variant.as_ref());
                    Persisted {
                        lifecycle: lifecycle::State::new(now, &m.policy),
                        last_group: 2,
                        primary: primary.clone(),
                        shadow: Some(shadow.clone()),
                        releasing: None,
                        configs: BTreeMap::from([
                            (primary, m.group.clone()),
                            (shadow, shadow_config),
                        ]),
                        pushed_version: None,
                        last_decision: None,
                        anomalies: VecDeque::new(),
                        pids: BTreeMap::new(),
                    }
                }
            };
            let orphans: Vec<(String, u32)> = state
                .pids
                .iter()
                .flat_map(|(g, pids)| {
                    let program = match state.configs.get(g).map(|c| &c.workload) {
                        Some(crate::provision::Workload::Command { program, .. }) => {
                            program.clone()
                        }
                        _ => String::new(),
                    };
                    pids.iter().map(move |p| (program.clone(), *p))
                })
                .filter(|(program, _)| !program.is_empty())
                .collect();
            let mut names = vec![state.primary.clone()];
            names.extend(state.shadow.clone());
            names.extend(state.releasing.clone());
            for name in &names {
                let Some(cfg) = state.configs.get(name) else {
                    anyhow::bail!(
                        "the stored lifecycle of \"{}\" has no configuration for group \"{name}\"",
                        service.name
                    );
                };
                let spec = GroupSpec {
                    name: name.clone(),
                    config: cfg.clone(),
                };
                provisioner
                    .ensure(&spec)
                    .await
                    .map_err(|e| anyhow::anyhow!("service \"{}\": {e}", service.name))?;
            }
            let mut state = state;
            if let Some(p) = &state.lifecycle.pending {
                // Stopped with a push in flight: it was persisted before it went out, so
                // resume with its weights; the first snapshot carries them and settles it.
                let mut shown = state.clone();
                shown.lifecycle.shadow_percent = p.shadow_percent;
                shown.lifecycle.mirror_percent = p.mirror_percent;
                fill(service, &shown, provisioner.as_ref());
                state.pushed_version = Some(0);
            } else {
                fill(service, &state, provisioner.as_ref());
            }
            save(store, &service.name, &state)?;
            let mut models = BTreeMap::new();
            for name in &names {
                models.insert(name.clone(), Models::new(&m));
            }
            services.insert(
                service.name.clone(),
                Svc {
                    state,
                    models,
                    orphans,
                },
            );
        }
        Ok(Engine {
            provisioner,
            services,
            window_ms,
            started: std::time::Instant::now(),
        })
    }

    /// Whether any service is managed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Runs the engine until the task is dropped.
    pub async fn run(mut self, cp: Arc<ControlPlane>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        cp.set_commands(tx);
        let tick_ms = cp
            .config()
            .services
            .iter()
            .filter_map(|s| s.managed.as_ref().map(|m| m.tick_ms))
            .min()
            .unwrap_or(1000);
        // The status shows the resumed state before the first tick.
        for name in self.services.keys() {
            cp.set_lifecycle_view(name, self.view(&cp, name));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let names: Vec<String> = self.services.keys().cloned().collect();
                    for name in names {
                        self.tick(&cp, &name).await;
                    }
                }
                Some(cmd) = rx.recv() => {
                    let answer = self.command(&cp, &cmd.service, cmd.op).await;
                    let _ = cmd.reply.send(answer);
                }
            }
        }
    }

    async fn command(
        &mut self,
        cp: &ControlPlane,
        service: &str,
        op: Op,
    ) -> Result<Value, ApiError> {
        let Some(m) = managed(cp, service) else {
            return Err(ApiError::NotFound(format!(
                "no service named \"{service}\" with a lifecycle"
            )));
        };
        let input = match op {
            Op::Pause => Input::Pause,
            Op::Resume => Input::Resume,
            Op::Abort => Input::Abort,
            Op::Promote => Input::Promote,
        };
        self.feed(cp, service, &m, input, now_ms()).await;
        Ok(self.view(cp, service))
    }

    /// One look at `service`: settle the pending push, feed the models, decide, act.
    async fn tick(&mut self, cp: &ControlPlane, service: &str) {
        let Some(m) = managed(cp, service) else {
            return;
        };
        let now = now_ms();
        self.refresh_endpoints(cp, service);
        self.settle_push(cp, service, &m, now).await;
        self.feed_models(cp, service, &m, now).await;
        let inputs = self.observe(cp, service, &m, now);
        for input in inputs {
            self.feed(cp, service, &m, input, now).await;
        }
        self.feed(cp, service, &m, Input::Tick, now).await;
        self.release_old(cp, service).await;
        self.stop_orphans(cp, service);
        self.record_pids(cp, service);
        let view = self.view(cp, service);
        cp.set_lifecycle_view(service, view);
    }

    /// Runs one input through the machine: persist, then act.
    async fn feed(
        &mut self,
        cp: &ControlPlane,
        service: &str,
        m: &Managed,
        input: Input,
        now: u64,
    ) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let Some(s) = self.services.get_mut(service) else {
                return;
            };
            let (next, actions) = lifecycle::step(&s.state.lifecycle, input, &m.policy, now);
            s.state.lifecycle = next;
            if let Err(e) = save(cp.store(), service, &s.state) {
                tracing::error!(service, "cannot persist the lifecycle: {e}");
            }
            for action in actions {
                if let Some(input) = self.act(cp, service, m, action).await {
                    queue.push_back(input);
                }
            }
        }
    }

    /// Carries out one action; returns the input it leads to right away, if any.
    async fn act(
        &mut self,
        cp: &ControlPlane,
        service: &str,
        m: &Managed,
        action: Action,
    ) -> Option<Input> {
        match action {
            Action::Event { kind, reason } => {
                let s = self.services.get(service)?;
                let mut ev = json!({
                    "event": "lifecycle",
                    "service": service,
                    "kind": kind,
                    "reason": reason,
                    "phase": phase_name(&s.state.lifecycle.phase),
                    "shadow_percent": s.state.lifecycle.shadow_percent,
                    "primary": s.state.primary,
                    "shadow": s.state.shadow,
                });
                if kind == "migration_started" || kind == "reactive_failover" {
                    ev["decision"] = s.state.last_decision.clone().unwrap_or(Value::Null);
                }
                tracing::info!(service, kind, reason, "lifecycle");
                cp.log(ev);
                None
            }
            Action::Push {
                id,
                shadow_percent,
                mirror_percent,
                ..
            } => {
                let s = self.services.get_mut(service)?;
                let mut state = s.state.clone();
                state.lifecycle.shadow_percent = shadow_percent;
                state.lifecycle.mirror_percent = mirror_percent;
                let (groups, weights, mirror) =
                    desired_groups(cp, service, &state, self.provisioner.as_ref());
                match cp.apply_managed(service, groups, weights, mirror) {
                    Ok(version) => {
                        s.state.pushed_version = Some(version);
                        if let Err(e) = save(cp.store(), service, &s.state) {
                            tracing::error!(service, "cannot persist the lifecycle: {e}");
                        }
                        // Settled right away when no Envoy is connected: nothing to wait for.
                        self.push_outcome(cp, service)
                            .map(|error| Input::Pushed { id, error })
                    }
                    Err(e) => Some(Input::Pushed {
                        id,
                        error: Some(e.to_string()),
                    }),
                }
            }
            Action::SwapRoles => self.swap_roles(cp, service, m).await,
        }
    }

    /// The shadow becomes the primary; a new shadow mirrors it; the old primary is released
    /// once Envoy no longer has it.
    async fn swap_roles(&mut self, cp: &ControlPlane, service: &str, m: &Managed) -> Option<Input> {
        let s = self.services.get_mut(service)?;
        let Some(new_primary) = s.state.shadow.clone() else {
            tracing::error!(service, "a role swap without a shadow");
            return None;
        };
        let old_primary = s.state.primary.clone();
        let new_config = s.state.configs.get(&new_primary)?.clone();
        let n = s.state.last_group + 1;
        let name = group_name(service, n);
        let shadow_config = crate::provision::mirror(&new_config, m.variant.as_ref());
        let spec = GroupSpec {
            name: name.clone(),
            config: shadow_config.clone(),
        };
        if let Err(e) = self.provisioner.ensure(&spec).await {
            cp.log(json!({"event": "lifecycle", "service": service, "kind": "shadow_failed", "reason": e.to_string()}));
            tracing::error!(service, "cannot create the new shadow: {e}");
            return None;
        }
        let s = self.services.get_mut(service)?;
        s.state.last_group = n;
        s.state.primary = new_primary;
        s.state.shadow = Some(name.clone());
        s.state.releasing = Some(old_primary);
        s.state.configs.insert(name.clone(), shadow_config);
        // All traffic is on the new primary; the new shadow starts at 0.
        s.state.lifecycle.shadow_percent = 0;
        s.models.insert(name, Models::new(m));
        if let Err(e) = save(cp.store(), service, &s.state) {
            tracing::error!(service, "cannot persist the lifecycle: {e}");
        }
        Some(Input::ShadowReady)
    }

    /// Stops a released primary once the snapshot without it is the stable one and no
    /// push is pending.
    async fn release_old(&mut self, cp: &ControlPlane, service: &str) {
        let Some(s) = self.services.get(service) else {
            return;
        };
        let Some(old) = s.state.releasing.clone() else {
            return;
        };
        if s.state.lifecycle.pending.is_some() {
            return;
        }
        let still_there = cp
            .service(service)
            .is_some_and(|svc| svc.groups.iter().any(|g| g.name == old));
        if still_there {
            return;
        }
        if let Err(e) = self
            .provisioner
            .release(&GroupHandle::new(old.clone()))
            .await
        {
            tracing::warn!(service, group = %old, "cannot release the old primary: {e}");
            return;
        }
        if let Some(s) = self.services.get_mut(service) {
            s.state.releasing = None;
            s.state.configs.remove(&old);
            s.models.remove(&old);
            if let Err(e) = save(cp.store(), service, &s.state) {
                tracing::error!(service, "cannot persist the lifecycle: {e}");
            }
        }
        cp.log(json!({"event": "lifecycle", "service": service, "kind": "group_released", "reason": format!("group {old} stopped after its standby period")}));
    }

    /// Remembers the instances' process ids, for the next run to stop if this one dies.
    fn record_pids(&mut self, cp: &ControlPlane, service: &str) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let mut pids = BTreeMap::new();
        for name in s.state.configs.keys() {
            if let Some(g) = self.provisioner.status(&GroupHandle::new(name.clone())) {
                pids.insert(
                    name.clone(),
                    g.instances
                        .iter()
                        .filter_map(|i| i.pid)
                        .collect::<Vec<u32>>(),
                );
            }
        }
        if pids != s.state.pids {
            s.state.pids = pids;
            if let Err(e) = save(cp.store(), service, &s.state) {
                tracing::error!(service, "cannot persist the lifecycle: {e}");
            }
        }
    }

    /// Stops the previous run's instances once every connected Envoy holds the current
    /// snapshot (which names only this run's endpoints). A pid is only signalled while its
    /// command line still names the program, so a reused pid is left alone.
    fn stop_orphans(&mut self, cp: &ControlPlane, service: &str) {
        let Some(s) = self.services.get(service) else {
            return;
        };
        // Without any Envoy connected, give them a minute to come back first.
        let waited = self.started.elapsed() > ORPHAN_GRACE;
        if s.orphans.is_empty() || !(synced_now(cp) || waited) {
            return;
        }
        for (program, pid) in &s.orphans {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if first != program.as_bytes() {
                continue;
            }
            if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                // Each instance leads its own process group (see provision::local).
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::TERM);
                tracing::info!(service, pid, "stopped an instance of the previous run");
            }
        }
        if let Some(s) = self.services.get_mut(service) {
            s.orphans.clear();
        }
    }

    /// Whether the pending push is settled: `Some(None)` ACKed everywhere, `Some(Some(e))`
    /// refused, `None` still waiting.
    fn push_outcome(&self, cp: &ControlPlane, service: &str) -> Option<Option<String>> {
        let s = self.services.get(service)?;
        let pushed = s.state.pushed_version?;
        let Some(g) = node_group(cp) else {
            return Some(None);
        };
        let Some(synced) = connected_synced(&g, pushed) else {
            return Some(None);
        };
        if g.version.parse::<u64>().unwrap_or(0) < pushed {
            // Rolled back: a node NACKed it and the cache went back to an older snapshot.
            let error = g
                .nodes
                .iter()
                .filter_map(|n| n.last_nack.as_ref().map(|k| k.error.clone()))
                .next_back()
                .unwrap_or_else(|| "rolled back".into());
            return Some(Some(error));
        }
        synced.then_some(None)
    }

    async fn settle_push(&mut self, cp: &ControlPlane, service: &str, m: &Managed, now: u64) {
        let pending = self
            .services
            .get(service)
            .and_then(|s| s.state.lifecycle.pending.clone());
        let Some(p) = pending else {
            return;
        };
        if self
            .services
            .get(service)
            .and_then(|s| s.state.pushed_version)
            .is_none()
        {
            return;
        }
        if let Some(error) = self.push_outcome(cp, service) {
            if let Some(s) = self.services.get_mut(service) {
                s.state.pushed_version = None;
            }
            self.feed(cp, service, m, Input::Pushed { id: p.id, error }, now)
                .await;
        }
    }

    /// Publishes the provisioner's endpoints when they changed (an instance restarted on
    /// another port, or one went unhealthy).
    fn refresh_endpoints(&mut self, cp: &ControlPlane, service: &str) {
        let Some(s) = self.services.get(service) else {
            return;
        };
        if s.state.lifecycle.pending.is_some() {
            return;
        }
        let Some(current) = cp.service(service) else {
            return;
        };
        let (groups, weights, mirror) =
            desired_groups(cp, service, &s.state, self.provisioner.as_ref());
        if groups != current.groups
            && let Err(e) = cp.apply_managed(service, groups, weights, mirror)
        {
            tracing::warn!(service, "cannot publish the new endpoints: {e}");
        }
    }

    /// Feeds every group's models with its settled windows and a system sample.
    async fn feed_models(&mut self, cp: &ControlPlane, service: &str, m: &Managed, now: u64) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let settled_before = now.saturating_sub(SETTLE_WINDOWS * self.window_ms);
        let names: Vec<String> = s.models.keys().cloned().collect();
        for name in names {
            let handle = GroupHandle::new(name.clone());
            let sample = self.provisioner.system_metrics(&handle).await.ok();
            let Some(models) = s.models.get_mut(&name) else {
                continue;
            };
            // A reload may have changed the prices; the forecasters see it in the data.
            if let (Some(cost), Some(prices)) = (models.cost.as_mut(), m.prices.as_ref()) {
                cost.set_prices(prices.clone());
            }
            if let Some(sample) = sample
                && sample.at_ms >= models.sys_stored_ms + self.window_ms
            {
                match serde_json::to_vec(&sample) {
                    Ok(json) => match cp.store().put_system(&name, sample.at_ms, &json, now) {
                        Ok(()) => models.sys_stored_ms = sample.at_ms,
                        Err(e) => tracing::warn!(group = %name, "cannot store system metrics: {e}"),
                    },
                    Err(e) => tracing::warn!(group = %name, "system metrics: {e}"),
                }
            }
            if models.fed_until_ms == 0 {
                // A fresh model (start or restart): rebuild from what the store kept.
                models.fed_until_ms =
                    now.saturating_sub(m.model.get().window as u64 * self.window_ms);
            }
            // The samples around the windows to feed: each window gets the rates between the
            // first sample at or after its end and the one before.
            let samples: Vec<crate::provision::SystemSample> = cp
                .store()
                .system(
                    &name,
                    models.fed_until_ms.saturating_sub(2 * self.window_ms),
                )
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(_, json)| serde_json::from_slice(&json).ok())
                .collect();
            // Envoy's own upstream samples of the group, mirrored requests included: stored,
            // so that after a restart an idle group's model is rebuilt like the others. The
            // last two windows are stored again (idempotent) for late samples of other Envoys.
            let fresh: Vec<(u64, String, Vec<u8>)> = cp
                .envoy_stats()
                .samples(
                    &name,
                    models.upstream_stored_ms.saturating_sub(2 * self.window_ms),
                )
                .into_iter()
                .filter_map(|x| Some((x.at_ms, x.node.clone(), serde_json::to_vec(&x).ok()?)))
                .collect();
            if let Some(last) = fresh.iter().map(|f| f.0).max() {
                match cp.store().put_upstream(&name, &fresh, now) {
                    Ok(()) => models.upstream_stored_ms = last,
                    Err(e) => tracing::warn!(group = %name, "cannot store Envoy samples: {e}"),
                }
            }
            let windows = match cp.store().windows(&name, models.fed_until_ms + 1) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(service, group = %name, "cannot read telemetry: {e}");
                    continue;
                }
            };
            let observed = observations(
                &windows,
                &cp.store()
                    .upstream(&name, models.fed_until_ms + 1)
                    .unwrap_or_default(),
                self.window_ms,
                models.fed_until_ms,
            );
            let fleet = s
                .state
                .configs
                .get(&name)
                .map(|c| (c.instance_type.clone(), c.instances));
            for w in observed.iter().filter(|w| w.end_ms <= settled_before) {
                models.fed_until_ms = w.start_ms;
                if w.requests == 0 {
                    continue;
                }
                let secs = (w.end_ms - w.start_ms).max(1) as f64 / 1000.0;
                let time = (w.start_ms / 1000) as i64;
                let after = samples.partition_point(|x| x.at_ms < w.end_ms);
                let mut point = match samples.get(after) {
                    Some(cur) => system_point(after.checked_sub(1).map(|i| &samples[i]), cur),
                    None => Point::default(),
                };
                point.time = time;
                let pooled = w
                    .stats
                    .and_then(|stats| pooled_p99_ms(&mut models.latency_pool, &stats.latency));
                let tail;
                (point.p99_ms, tail) = pooled.unwrap_or((w.p99_ms, Vec::new()));
                point.rps = w.requests as f64 / secs;
                point.mirrored = w.stats.is_none();
                if let Some(stats) = w.stats {
                    point.error_rate = error_rate(stats);
                    point.timeouts = stats.timeouts as f64 / stats.requests as f64;
                    point.resets =
                        (stats.upstream_resets + stats.local_resets) as f64 / stats.requests as f64;
                }
                if let Err(e) = models.p99.update(time, point.p99_ms, &[]) {
                    tracing::debug!(group = %name, "p99 forecaster: {e}");
                }
                let verdict = match models.latency.update(time, point.p99_ms, &[]) {
                    Ok(v) => {
                        models.latency_tail = tail;
                        v
                    }
                    Err(e) => {
                        tracing::debug!(group = %name, "latency model: {e}");
                        continue;
                    }
                };
                // Envoy's samples carry latency only: errors and cost learn from the filter's
                // windows (the requests clients got answers from).
                if let Some(stats) = w.stats {
                    let failed = stats.responses_5xx + stats.no_response;
                    let (pooled, counts) =
                        pooled_error_rate(&mut models.error_pool, stats.requests, failed);
                    if models.errors.update(time, pooled, &[]).is_ok() {
                        models.error_counts = Some(counts);
                    }
                    if let (Some(cost), Some((kind, count))) =
                        (models.cost.as_mut(), fleet.as_ref())
                    {
                        let _ = cost.update(time, &[(kind.as_str(), *count)], point.rps);
                    }
                }
                point.deviation = verdict.deviation;
                models.recent.push_back(point);
                while models.recent.len() > RECENT {
                    models.recent.pop_front();
                }
                if verdict.anomalous && name == s.state.primary {
                    let causes = causes(&models.recent, 6);
                    s.state.anomalies.push_back(json!({
                        "at_ms": w.start_ms,
                        "group": name,
                        "p99_ms": round3(point.p99_ms),
                        "expected_ms": verdict.expected.map(round3),
                        "deviation_sigma": round3(verdict.deviation),
                        "score": round3(verdict.score),
                        "severity": round3(verdict.severity),
                        "causes": causes,
                    }));
                    while s.state.anomalies.len() > ANOMALIES {
                        s.state.anomalies.pop_front();
                    }
                }
            }
        }
    }

    /// The inputs the models and the comparison give now.
    fn observe(&mut self, cp: &ControlPlane, service: &str, m: &Managed, now: u64) -> Vec<Input> {
        let Some(s) = self.services.get_mut(service) else {
            return Vec::new();
        };
        let mut inputs = Vec::new();
        if s.state.lifecycle.pending.is_some() {
            return inputs;
        }
        // A hard failure of the primary: no instance ready, or most requests failing.
        let primary = s.state.primary.clone();
        if s.state.lifecycle.shadow_percent < 100 {
            let ready = self
                .provisioner
                .status(&GroupHandle::new(primary.clone()))
                .map(|g| g.instances.iter().any(|i| i.state == InstanceState::Ready));
            let last = cp
                .store()
                .windows(&primary, now.saturating_sub(4 * self.window_ms))
                .ok()
                .and_then(|w| w.into_iter().rev().find(|w| w.stats.requests >= FAILED_MIN));
            let failing = last
                .as_ref()
                .map(|w| error_rate(&w.stats))
                .filter(|r| *r >= FAILED_SHARE);
            if ready == Some(false) {
                inputs.push(Input::PrimaryFailed {
                    reason: format!("no instance of {primary} is ready"),
                });
            } else if let Some(r) = failing {
                inputs.push(Input::PrimaryFailed {
                    reason: format!(
                        "{primary} failed {:.0}% of its last window's requests",
                        r * 100.0
                    ),
                });
            }
        }
        match s.state.lifecycle.phase {
            Phase::Watching { .. } => {
                if let Some(models) = s.models.get_mut(&primary) {
                    let time = (now / 1000) as i64;
                    let group = GroupForecasts {
                        p99_ms: models.latency.forecaster(),
                        p99_over_horizon: Some(&models.p99),
                        error_rate: &models.errors,
                        cost_per_hour: models.cost.as_ref().map(CostModel::per_hour),
                        error_counts: models.error_counts,
                        p99_tail: (!models.latency_tail.is_empty())
                            .then_some(models.latency_tail.as_slice()),
                    };
                    let forecast = forecast_json(models, m);
                    match models.trigger.check(time, &group) {
                        Ok(d) => {
                            // Severe and persistent anomalies (the design's 3 sigma rule):
                            // p99 at least 3 sigma above its forecast in 5 of the last 6
                            // windows, once it is past half its SLO (far below it they are
                            // reported, not acted on).
                            let half_slo = m.trigger.get().slo_p99_ms / 2.0;
                            let persistent = models
                                .recent
                                .iter()
                                .rev()
                                .take(6)
                                .filter(|p| p.deviation >= 3.0 && p.p99_ms >= half_slo)
                                .count()
                                >= 5;
                            let migrate = d.action == trigger::Action::Migrate || persistent;
                            let reason = if d.action == trigger::Action::Migrate {
                                d.reason.clone()
                            } else if persistent {
                                "p99 latency at least 3 sigma above its forecast in 5 of the last 6 windows".to_string()
                            } else {
                                d.reason.clone()
                            };
                            // Refreshed on every check, so the status shows the current
                            // reason and forecast, not the first "still warming up" of the
                            // phase; it is persisted with the next state change.
                            s.state.last_decision = Some(json!({
                                "at_ms": now,
                                "action": if migrate { "migrate" } else { "stay" },
                                "metric": d.metric,
                                "severity": round3(d.severity),
                                "breach_at_s": d.breach_at,
                                "reason": reason,
                                "forecast": forecast,
                                "causes": causes(&models.recent, 6),
                            }));
                            if migrate {
                                inputs.push(Input::Trigger {
                                    migrate: true,
                                    reason,
                                });
                            }
                        }
                        Err(e) => tracing::debug!(service, "trigger: {e}"),
                    }
                }
            }
            Phase::WarmUp { since_ms } | Phase::Shifting { since_ms, .. } => {
                if let Some(shadow) = s.state.shadow.clone() {
                    let a = merged(cp.store(), &primary, since_ms);
                    let b = merged(cp.store(), &shadow, since_ms);
                    if let CompareVerdict::Worse(reason) = compare::compare(&a, &b, &m.compare) {
                        inputs.push(Input::Compared {
                            shadow_worse: true,
                            reason,
                        });
                    }
                }
            }
            _ => {}
        }
        inputs
    }

    /// The status view of one service.
    fn view(&self, cp: &ControlPlane, service: &str) -> Value {
        let Some(s) = self.services.get(service) else {
            return Value::Null;
        };
        let l = &s.state.lifecycle;
        let m = managed(cp, service);
        let step = match &l.phase {
            Phase::Shifting { step, .. } => Some(*step),
            _ => None,
        };
        let groups: Vec<Value> = [
            Some((s.state.primary.clone(), "primary")),
            s.state.shadow.clone().map(|g| (g, "shadow")),
            s.state.releasing.clone().map(|g| (g, "released")),
        ]
        .into_iter()
        .flatten()
        .map(|(name, role)| {
            let status = self.provisioner.status(&GroupHandle::new(name.clone()));
            let models = s.models.get(&name);
            // Envoy's own view of the group over the last 10 s: for a cold shadow, the
            // latency of the mirrored requests, which the filter cannot see.
            let envoy = cp
                .envoy_stats()
                .summary(&name, now_ms().saturating_sub(10_000));
            json!({
                "name": name,
                "role": role,
                "envoy_upstream": envoy,
                "config": s.state.configs.get(&name),
                "instances": status.map(|g| g.instances),
                "forecast": match (models, m.as_ref()) {
                    (Some(models), Some(m)) => forecast_json(models, m),
                    _ => Value::Null,
                },
            })
        })
        .collect();
        json!({
            "service": service,
            "phase": phase_name(&l.phase),
            "phase_state": l.phase,
            "step": step,
            "steps": m.as_ref().map(|m| m.policy.steps.clone()),
            "weights": {"primary": 100 - l.shadow_percent.min(100), "shadow": l.shadow_percent},
            "mirror_percent": l.mirror_percent,
            "paused": l.paused,
            "pending_push": l.pending.as_ref().map(|p| json!({"id": p.id, "shadow_percent": p.shadow_percent})),
            "primary": s.state.primary,
            "shadow": s.state.shadow,
            "groups": groups,
            "last_decision": s.state.last_decision,
            "anomalies": s.state.anomalies,
        })
    }
}

/// The sync status of the control plane's node group, once a node has been seen.
fn node_group(cp: &ControlPlane) -> Option<shadowplane_xds::GroupStatus> {
    let group = cp.node_cluster();
    cp.cache().status().into_iter().find(|g| g.group == group)
}

/// Whether every connected node of `g` holds `version` or newer; `None` when none is
/// connected.
fn connected_synced(g: &shadowplane_xds::GroupStatus, version: u64) -> Option<bool> {
    let mut connected = g.nodes.iter().filter(|n| n.connected).peekable();
    connected.peek()?;
    Some(connected.all(|n| {
        n.state == shadowplane_xds::SyncState::Synced
            && n.target_version.parse::<u64>().unwrap_or(0) >= version
    }))
}

/// Whether at least one node is connected and every connected one holds the snapshot in
/// effect.
fn synced_now(cp: &ControlPlane) -> bool {
    node_group(cp).and_then(|g| connected_synced(&g, cp.version())) == Some(true)
}

fn managed(cp: &ControlPlane, service: &str) -> Option<Managed> {
    cp.service(service).and_then(|s| s.managed)
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Cold { .. } => "cold",
        Phase::Watching { .. } => "watching",
        Phase::WarmUp { .. } => "warm_up",
        Phase::Shifting { .. } => "shifting",
        Phase::Standby { .. } => "standby",
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn error_rate(s: &ClusterStats) -> f64 {
    if s.requests == 0 {
        return 0.0;
    }
    (s.responses_5xx + s.no_response) as f64 / s.requests as f64
}

/// A group's windows from `since_ms` on, merged.
fn merged(store: &Store, group: &str, since_ms: u64) -> ClusterStats {
    let mut all = ClusterStats::new(group);
    if let Ok(windows) = store.windows(group, since_ms) {
        for w in windows.iter().filter(|w| w.start_ms >= since_ms) {
            // Only counts near u64::MAX fail: the windows merged so far stand.
            if all.merge(&w.stats).is_err() {
                break;
            }
        }
    }
    all
}

/// Rates from two system samples (counters are cumulative); CPU from the CPU time between
/// them when both have it.
fn system_point(
    prev: Option<&crate::provision::SystemSample>,
    now: &crate::provision::SystemSample,
) -> Point {
    let ms = prev.map_or(now.interval_ms, |p| now.at_ms.saturating_sub(p.at_ms));
    let secs = ms.max(1) as f64 / 1000.0;
    let rate = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / secs,
        _ => 0.0,
    };
    let total = |r: Option<u64>, w: Option<u64>| r.zip(w).map(|(r, w)| r + w);
    let p = prev;
    let cpu = match (p.and_then(|p| p.cpu_seconds), now.cpu_seconds) {
        (Some(a), Some(b)) => (b - a).max(0.0) / secs,
        _ => now.cpu_cores.unwrap_or(0.0),
    };
    Point {
        cpu,
        rss: now.rss_bytes.unwrap_or(0) as f64,
        faults: rate(p.and_then(|p| p.page_faults), now.page_faults),
        disk: rate(
            p.and_then(|p| total(p.disk_read_bytes, p.disk_write_bytes)),
            total(now.disk_read_bytes, now.disk_write_bytes),
        ),
        net: rate(
            p.and_then(|p| total(p.net_rx_bytes, p.net_tx_bytes)),
            total(now.net_rx_bytes, now.net_tx_bytes),
        ),
        ..Point::default()
    }
}

/// The root-cause ranking over the last `window` points of `recent`.
fn causes(recent: &VecDeque<Point>, window: usize) -> Value {
    let n = recent.len();
    if n < window + 10 {
        return json!([]);
    }
    let col = |f: fn(&Point) -> f64| recent.iter().map(f).collect::<Vec<f64>>();
    let deviation = col(|p| p.deviation);
    let series = [
        ("cpu", CauseKind::SystemMetric, col(|p| p.cpu)),
        ("memory_rss", CauseKind::SystemMetric, col(|p| p.rss)),
        ("page_faults", CauseKind::SystemMetric, col(|p| p.faults)),
        ("disk_io", CauseKind::SystemMetric, col(|p| p.disk)),
        ("network_io", CauseKind::SystemMetric, col(|p| p.net)),
        ("5xx", CauseKind::ErrorClass, col(|p| p.error_rate)),
        ("timeouts", CauseKind::ErrorClass, col(|p| p.timeouts)),
        ("resets", CauseKind::ErrorClass, col(|p| p.resets)),
    ];
    let signals: Vec<Signal<'_>> = series
        .iter()
        .map(|(name, kind, values)| Signal {
            name,
            kind: *kind,
            values,
        })
        .collect();
    match rootcause::rank(&deviation, &signals, n - window..n) {
        Ok(causes) => json!(causes.into_iter().take(4).collect::<Vec<_>>()),
        Err(_) => json!([]),
    }
}

fn forecast_json(models: &Models, m: &Managed) -> Value {
    let horizon = m.trigger.get().horizon;
    let one = |f: &Forecaster| match f.predict(horizon, 0.95) {
        Ok(Forecast::Ready(p)) => json!({
            "horizon": horizon,
            "mean": round3(p.mean),
            "lower": round3(p.lower),
            "upper": round3(p.upper),
            "confidence": p.confidence,
            "model": p.model.name(),
        }),
        Ok(Forecast::NotEnoughData { have, need }) => {
            json!({"not_enough_data": {"have": have, "need": need}})
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    json!({
        "p99_ms": one(models.latency.forecaster()),
        // The same, from the forecaster chosen over the trigger's horizon (the trigger takes
        // the graver of the two).
        "p99_ms_over_horizon": one(&models.p99),
        "error_rate": one(&models.errors),
        "cost_per_hour": models.cost.as_ref().map(|c| one(c.per_hour())),
        "last_p99_ms": models.recent.back().map(|p| round3(p.p99_ms)),
        // Where the last point came from: the filter's telemetry, or Envoy's upstream
        // statistics of mirrored requests (an idle group: a cold shadow, a standby primary).
        "last_source": models.recent.back().map(|p| if p.mirrored { "envoy_mirrored" } else { "filter" }),
        "model": models.latency.forecaster().selected().map(|k| k.name()),
        "recent_p99_ms": models.recent.iter().rev().take(12).rev().map(|p| round3(p.p99_ms)).collect::<Vec<_>>(),
    })
}

/// One window of a group as the models see it: from the filter's telemetry when the window
/// has any, else from Envoy's upstream samples (an idle group's mirrored requests).
#[derive(Debug, Clone, PartialEq)]
struct Observed<'a> {
    start_ms: u64,
    end_ms: u64,
    requests: u64,
    p99_ms: f64,
    /// The filter's window; `None` for Envoy samples.
    stats: Option<&'a ClusterStats>,
}

/// Merges the filter's `windows` and Envoy's `upstream` samples (flush time, node, JSON) into
/// windows of `window_ms` after `after_ms`, oldest first. A window the filter saw requests in
/// is the filter's; the others take Envoy's samples flushed in them: their requests summed and
/// the highest p99 of them (the samples of several Envoys do not merge exactly).
fn observations<'a>(
    windows: &'a [crate::store::Window],
    upstream: &[(u64, String, Vec<u8>)],
    window_ms: u64,
    after_ms: u64,
) -> Vec<Observed<'a>> {
    let window_ms = window_ms.max(1);
    let mut out: BTreeMap<u64, Observed<'a>> = BTreeMap::new();
    for w in windows.iter().filter(|w| w.start_ms > after_ms) {
        out.insert(
            w.start_ms,
            Observed {
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                requests: w.stats.requests,
                p99_ms: w.stats.latency.quantile(0.99).unwrap_or(0.0) / 1000.0,
                stats: Some(&w.stats),
            },
        );
    }
    for (at, _, json) in upstream {
        let Ok(sample) = serde_json::from_slice::<crate::envoy_stats::Sample>(json) else {
            continue;
        };
        // A flush at `at` covers the interval before it.
        let start = at.saturating_sub(1) - at.saturating_sub(1) % window_ms;
        if start <= after_ms || sample.requests == 0 || !sample.p99_ms.is_finite() {
            continue;
        }
        let o = out.entry(start).or_insert(Observed {
            start_ms: start,
            end_ms: start + window_ms,
            requests: 0,
            p99_ms: 0.0,
            stats: None,
        });
        if o.stats.is_some_and(|s| s.requests > 0) {
            continue;
        }
        o.stats = None;
        o.requests += sample.requests;
        o.p99_ms = o.p99_ms.max(sample.p99_ms);
    }
    out.into_values().collect()
}

/// The groups, weights and mirror share `state` stands for, with the provisioner's endpoints
/// (the last published ones while a group has none ready).
fn desired_groups(
    cp: &ControlPlane,
    service: &str,
    state: &Persisted,
    provisioner: &dyn Provisioner,
) -> (Vec<Group>, Weights, u32) {
    let current = cp.service(service);
    let endpoints = |name: &str| {
        let now = provisioner.endpoints(&GroupHandle::new(name));
        if now.is_empty() {
            current
                .as_ref()
                .and_then(|s| s.groups.iter().find(|g| g.name == name))
                .map(|g| g.endpoints.clone())
                .unwrap_or_default()
        } else {
            now
        }
    };
    build(state, endpoints)
}

fn build(
    state: &Persisted,
    endpoints: impl Fn(&str) -> Vec<std::net::SocketAddr>,
) -> (Vec<Group>, Weights, u32) {
    let shadow_percent = state.lifecycle.shadow_percent.min(100);
    let mut groups = vec![Group {
        name: state.primary.clone(),
        role: Role::Primary,
        endpoints: endpoints(&state.primary),
        connect_timeout_ms: 1000,
    }];
    if let Some(shadow) = &state.shadow {
        groups.push(Group {
            name: shadow.clone(),
            role: Role::Shadow,
            endpoints: endpoints(shadow),
            connect_timeout_ms: 1000,
        });
    }
    let weights = Weights::split(shadow_percent, state.shadow.is_some());
    let mirror = if state.shadow.is_some() {
        state.lifecycle.mirror_percent
    } else {
        0
    };
    (groups, weights, mirror)
}

/// Fills a managed service's groups, weights and mirror share from its persisted state.
fn fill(service: &mut Service, state: &Persisted, provisioner: &dyn Provisioner) {
    let (groups, weights, mirror) =
        build(state, |name| provisioner.endpoints(&GroupHandle::new(name)));
    service.groups = groups;
    service.weights = weights;
    service.mirror_percent = mirror;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy_stats::Sample;
    use crate::store::Window;
    use shadowplane_wire::LatencySketch;

    fn window(start_ms: u64, requests: u64, ms: f64) -> Window {
        let mut latency = LatencySketch::new();
        for _ in 0..requests {
            latency.add(ms * 1000.0);
        }
        Window {
            start_ms,
            end_ms: start_ms + 1000,
            reports: 1,
            stats: ClusterStats {
                requests,
                responses_2xx: requests,
                latency,
                ..ClusterStats::new("g")
            },
        }
    }

    fn sample(at_ms: u64, node: &str, requests: u64, p99_ms: f64) -> (u64, String, Vec<u8>) {
        let s = Sample {
            at_ms,
            node: node.into(),
            requests,
            p50_ms: p99_ms / 2.0,
            p99_ms,
        };
        (at_ms, node.into(), serde_json::to_vec(&s).unwrap())
    }

    #[test]
    fn the_error_rate_is_pooled_over_enough_requests() {
        let mut pool = VecDeque::new();
        // 200 requests a window, one failure every tenth window: 0.05%, not 0.5%.
        let mut rates = Vec::new();
        for i in 0..60 {
            rates.push(pooled_error_rate(&mut pool, 200, u64::from(i % 10 == 0)).0);
        }
        assert!(rates[0] == 1.0 / 200.0, "{rates:?}");
        let last = *rates.last().unwrap();
        // The newest 10 windows (2,000 requests) hold one failure.
        assert!((last - 1.0 / 2000.0).abs() < 1e-12, "{last}");
        // Enough requests in one window: that window alone.
        assert_eq!(pooled_error_rate(&mut pool, 4000, 200), (0.05, (200, 4000)));
    }

    #[test]
    fn the_p99_is_pooled_over_enough_requests() {
        let mut pool = VecDeque::new();
        let sketch = |n: u64, ms: f64| {
            let mut s = LatencySketch::new();
            for _ in 0..n {
                s.add(ms * 1000.0);
            }
            s
        };
        // Four windows of 50 requests: the fourth is slow, but its p99 is pooled with the
        // three before it (200 requests), of which it is a quarter.
        for _ in 0..3 {
            pooled_p99_ms(&mut pool, &sketch(50, 10.0));
        }
        let p = pooled_p99_ms(&mut pool, &sketch(50, 80.0)).unwrap().0;
        assert!((p - 80.0).abs() < 1.0, "{p}");
        let mut fast_tail = sketch(49, 10.0);
        fast_tail.add(500_000.0);
        let (p, tail) = pooled_p99_ms(&mut pool, &fast_tail).unwrap();
        // The merged distribution goes with it, for the trigger to weigh the point.
        assert_eq!(tail.iter().map(|(_, c)| c).sum::<u64>(), 200);
        assert_eq!(tail.iter().filter(|(ms, _)| *ms > 400.0).count(), 1);
        // 200 requests: 150 at 10 ms (three windows ago dropped), 50 at 80, one at 500: the
        // p99 is one of the 80 ms ones, not the outlier.
        assert!((p - 80.0).abs() < 1.0, "{p}");
        // A window with enough requests alone is its own p99.
        let p = pooled_p99_ms(&mut pool, &sketch(300, 20.0)).unwrap().0;
        assert!((p - 20.0).abs() < 0.3, "{p}");
    }

    #[test]
    fn windows_without_filter_telemetry_take_envoys_mirrored_samples() {
        let windows = [window(10_000, 50, 20.0), window(12_000, 0, 0.0)];
        let upstream = [
            // Flushed in the filter's window: the filter's window wins.
            sample(10_500, "a", 5, 99.0),
            // Two Envoys in one window with no filter telemetry: summed, the higher p99.
            sample(11_200, "a", 3, 30.0),
            sample(11_900, "b", 2, 40.0),
            // A window the filter saw no request in.
            sample(12_400, "a", 4, 35.0),
            // Already fed, idle, or unreadable: skipped.
            sample(9_500, "a", 9, 50.0),
            sample(13_100, "a", 0, 0.0),
            (13_500, "a".into(), b"not json".to_vec()),
        ];
        let got = observations(&windows, &upstream, 1000, 9_999);
        let view: Vec<(u64, u64, f64, bool)> = got
            .iter()
            .map(|o| (o.start_ms, o.requests, o.p99_ms.round(), o.stats.is_some()))
            .collect();
        assert_eq!(
            view,
            [
                (10_000, 50, 20.0, true),
                (11_000, 5, 40.0, false),
                (12_000, 4, 35.0, false),
            ]
        );
    }
}
