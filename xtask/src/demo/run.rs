//! One scenario run for real: `shadowplane serve` with a lifecycle, two Envoys with the
//! filter, the groups as local `example-upstream` processes, an open-loop load, the scenario's
//! faults injected at their times, and a timeline of what the control plane said and the
//! clients saw.
//!
//! The lifecycle's shadow mirrors the primary's recorded configuration, so both groups start
//! from the same command (the primary's profile up to the start). A fault belongs to the
//! machines, not to the configuration: each effect that starts later is added at its time,
//! through `POST /_control/effects`, to the instances of the group in that role at that
//! time (the scenario's primary's effects to whichever group is the primary then).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shadowplane_e2e::control_plane::{ControlPlane, ads_bootstrap};
use shadowplane_e2e::envoy::{Envoy, EnvoyOpts};
use shadowplane_e2e::load::Client;
use shadowplane_example_upstream::scenario::{LaunchContext, Scenario};
use tokio::sync::Semaphore;

/// How the run reacts to the primary's trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// shadowplane: migrate on the forecast, before the SLO breaks.
    Predictive,
    /// The Flagger way: a static p99 and error-rate check every interval; traffic moves after
    /// N failed checks in a row.
    Reactive,
    /// Nothing moves.
    None,
}

/// The built programs a run needs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `shadowplane`.
    pub shadowplane: PathBuf,
    /// `example-upstream`.
    pub upstream: PathBuf,
    /// The filter's `.wasm`.
    pub wasm: PathBuf,
}

/// The Envoys in front of the service.
const EDGES: [&str; 2] = ["edge-1", "edge-2"];
/// The filter's report window; also the control plane's model step.
const REPORT_MS: u64 = 1000;
/// How often the timeline is sampled.
const TICK: Duration = Duration::from_secs(1);
/// How far ahead the trigger looks, in points of [`REPORT_MS`]: the migration (warm-up and
/// six steps) takes about 14 s, and the decision must come before that.
pub const HORIZON: usize = 30;
/// The trigger migrates when the forecast risks this share of the SLO: the operator's margin.
const ENTER: f64 = 0.9;
/// How long before the scenario clock starts the stack is started.
const LEAD: Duration = Duration::from_secs(12);
/// A request without an answer after this long counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as a client saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// Scenario time it was planned for, seconds.
    pub t_s: f64,
    /// From the planned send time to the whole answer, ms (queueing in the load generator
    /// included, so a slow service cannot hide by slowing the load down).
    pub latency_ms: f64,
    /// HTTP status; 0 without an answer.
    pub status: u16,
    /// The group that answered (`x-served-by`).
    pub served_by: Option<String>,
}

/// One sample of the timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tick {
    /// Wall seconds since the load started.
    pub wall_s: f64,
    /// Scenario time, seconds.
    pub t_s: f64,
    /// The scenario's phase.
    pub scenario_phase: String,
    /// The lifecycle phase.
    pub phase: String,
    /// Current primary and shadow group names.
    pub primary: String,
    /// The shadow, if there is one.
    pub shadow: Option<String>,
    /// Percent of the traffic on the shadow.
    pub shadow_percent: f64,
    /// The control plane's p99 forecast of the primary: mean, lower, upper (95%), ms.
    pub forecast: Option<[f64; 3]>,
    /// The primary's last p99 in the control plane's telemetry, ms.
    pub model_p99_ms: Option<f64>,
    /// The p99 the clients saw over the last tick, ms.
    pub client_p99_ms: Option<f64>,
    /// Requests answered in the last tick.
    pub requests: u64,
    /// Requests failed (no answer or 5xx) in the last tick.
    pub failed: u64,
    /// Requests answered in the last tick, by the group that answered.
    pub served: std::collections::BTreeMap<String, u64>,
    /// The serving groups' cost per hour by the scenario's prices.
    pub cost_per_hour: Option<f64>,
    /// The root-cause ranking of the last anomaly: (cause, score).
    pub causes: Vec<(String, f64)>,
    /// Anomalies the control plane reported so far.
    pub anomalies: usize,
    /// The last decision's reason.
    pub decision: Option<String>,
}

/// Everything a run observed.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The policy run.
    pub policy: Policy,
    /// The scenario as checked, defaults filled in.
    pub scenario: Scenario,
    /// The lifecycle events (`kind`, `reason`, `at_ms`, `t_s`, ...).
    pub events: Vec<Value>,
    /// The timeline, one tick a second.
    pub ticks: Vec<Tick>,
    /// Every request.
    #[serde(skip)]
    pub requests: Vec<Request>,
    /// The group names: (the scenario's primary, the scenario's shadow) as the lifecycle
    /// named them.
    pub groups: (String, String),
    /// The effects injected, and the price changes sent: (scenario time, group or `prices`, kind).
    pub injected: Vec<(f64, String, String)>,
    /// The reactive baseline's moves: scenario time of each.
    pub reactive_moves: Vec<f64>,
    /// The control plane's log, for when something went wrong.
    #[serde(skip)]
    pub log: String,
}

/// What the live screen is shown each tick.
pub type Progress<'a> = &'a mut (dyn FnMut(&Tick, &[Value]) + Send);

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lifecycle timings in wall milliseconds for a scenario: cold until shortly before the
/// fault, and a migration (warm-up and six steps) in about 14 s.
struct Timings {
    cold_ms: u64,
    warmup_ms: u64,
    dwell_ms: u64,
    standby_ms: u64,
    horizon: usize,
}

fn timings(s: &Scenario, policy: Policy) -> Timings {
    let onset_wall_s = s
        .fault_onset_s()
        .map(|t| (t - s.start_s) / s.time_scale)
        .unwrap_or(s.duration_s / s.time_scale / 3.0);
    // Cold from the control plane's start (LEAD before the load) until 10 s before the fault:
    // the models see the normal service first.
    let cold_ms =
        ((LEAD.as_secs_f64() + onset_wall_s - 10.0) * 1000.0).clamp(20_000.0, 120_000.0) as u64;
    Timings {
        // Only the predictive policy leaves cold by itself; the others stay there until
        // the reactive check (or nothing) promotes.
        cold_ms: match policy {
            Policy::Predictive => cold_ms,
            Policy::Reactive | Policy::None => 24 * 3_600_000,
        },
        warmup_ms: 2000,
        dwell_ms: 2000,
        standby_ms: 20_000,
        horizon: HORIZON,
    }
}

fn yaml(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The control plane's configuration for `s` under `policy`.
fn config(
    s: &Scenario,
    p: &Programs,
    policy: Policy,
    epoch_unix_ms: u64,
    prices_at_s: f64,
    xds: u16,
    admin: u16,
) -> String {
    let t = timings(s, policy);
    let launch = s.launch(
        &s.primary,
        &LaunchContext {
            upstream: p.upstream.clone(),
            epoch_unix_ms,
            whole_profile: false,
        },
    );
    let args: Vec<String> = launch.args.iter().map(|a| yaml(a)).collect();
    let prices = s.prices_at(prices_at_s);
    let prices = if prices.is_empty() {
        String::new()
    } else {
        let items: Vec<String> = prices
            .iter()
            .map(|(k, v)| format!("{}: {v}", yaml(k)))
            .collect();
        format!("      prices: {{{}}}\n", items.join(", "))
    };
    let variant = if s.shadow.instance_type != s.primary.instance_type {
        format!(
            "      shadow_variant: {{instance_type: {}}}\n",
            yaml(&s.shadow.instance_type)
        )
    } else {
        String::new()
    };
    let budget = match (s.budget_per_hour, prices.is_empty()) {
        (Some(b), false) => format!("        cost_budget_per_hour: {b}\n"),
        _ => String::new(),
    };
    format!(
        "\
xds: {{address: 127.0.0.1:{xds}}}
admin: {{address: 127.0.0.1:{admin}}}
filter:
  wasm: {wasm}
  routing: sticky
  session_key: {{header: {header}}}
  report_interval_ms: {REPORT_MS}
  auth_token: demo-token
listeners:
  - name: ingress
    address: 127.0.0.1:0
services:
  - name: {service}
    listener: ingress
    lifecycle:
      group:
        workload: {{command: {{program: {program}, args: [{args}]}}}}
        version: v1
        instances: {instances}
        instance_type: {itype}
{variant}{prices}      policy:
        cold_ms: {cold}
        mirror_percent: 5
        warmup_ms: {warm}
        step_dwell_ms: {dwell}
        standby_ms: {standby}
        cooldown_ms: 20000
        push_timeout_ms: 5000
      trigger:
        slo_p99_ms: {slo}
        slo_error_rate: {slo_err}
{budget}        horizon: {horizon}
        confidence: 0.8
        enter: {ENTER}
        exit: 0.7
        min_dwell_secs: 0
      compare:
        min_requests: 30
      model:
        warmup: 20
        window: 600
        refit_every: 5
        validation_blocks: 1
        max_horizon: {horizon}
        min_calibration: 10
        calibration_window: 200
        daily_harmonics: 0
        weekly_harmonics: 0
        # Holt-Winters for the steady service, a robust line through the newest 24 windows
        # for a creep: Holt-Winters' trend, fitted while the service was flat, stays flat.
        candidates: [holt_winters, local_trend]
      tick_ms: 250
",
        wasm = yaml(&p.wasm.display().to_string()),
        header = yaml(&s.load.session_header),
        service = yaml(&s.service),
        program = yaml(&launch.program),
        args = args.join(", "),
        instances = s.primary.instances,
        itype = yaml(&s.primary.instance_type),
        cold = t.cold_ms,
        warm = t.warmup_ms,
        dwell = t.dwell_ms,
        standby = t.standby_ms,
        slo = s.slo.p99_ms,
        slo_err = s.slo.error_rate,
        horizon = t.horizon,
    )
}

/// The processes the local provisioner started, which outlive the control plane by design:
/// stopped (by process group) when the run ends, however it ends.
#[derive(Default)]
struct Instances(Mutex<BTreeSet<u32>>);

impl Instances {
    fn saw(&self, view: &Value) {
        let pids = view["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["instances"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| i["pid"].as_u64().map(|p| p as u32));
        if let Ok(mut seen) = self.0.lock() {
            seen.extend(pids);
        }
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        let pids = self.0.lock().map(|p| p.clone()).unwrap_or_default();
        for pid in pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::TERM);
            }
        }
    }
}

/// The running stack.
struct Stack {
    cp: ControlPlane,
    envoys: Vec<Envoy>,
    urls: Vec<String>,
    service: String,
    instances: Arc<Instances>,
    client: Client,
}

impl Stack {
    async fn lifecycle(&self) -> Result<Value> {
        let (status, v) = self.cp.admin("GET", "/v1/lifecycle", None).await?;
        if status != 200 {
            bail!("GET /v1/lifecycle answered {status}: {v}");
        }
        let view = v["services"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s["service"] == self.service.as_str())
                    .cloned()
            })
            .unwrap_or(Value::Null);
        self.instances.saw(&view);
        Ok(view)
    }

    /// The instances' addresses of group `name`.
    async fn addrs(&self, name: &str) -> Result<Vec<String>> {
        let v = self.lifecycle().await?;
        Ok(v["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["name"] == name)
            .flat_map(|g| g["instances"].as_array().cloned().unwrap_or_default())
            .filter_map(|i| i["addr"].as_str().map(str::to_string))
            .collect())
    }

    async fn op(&self, op: &str) -> Result<()> {
        let path = format!("/v1/services/{}/lifecycle/{op}", self.service);
        let (status, v) = self.cp.admin("POST", &path, None).await?;
        if status != 200 {
            bail!("POST {path} answered {status}: {v}");
        }
        Ok(())
    }
}

/// Runs `s` under `policy` and returns what was seen. `progress` is called once a tick.
pub async fn run(
    s: &Scenario,
    p: &Programs,
    policy: Policy,
    progress: Progress<'_>,
) -> Result<Outcome> {
    // The scenario clock starts a little ahead, when the stack should be up; the load starts
    // then (or later: the clock does not wait, so a slow start only shortens the run).
    let epoch = now_unix_ms() + LEAD.as_millis() as u64;
    let cfg = |x: u16, a: u16| config(s, p, policy, epoch, s.start_s, x, a);
    let cp = ControlPlane::start(&p.shadowplane, cfg)
        .await
        .context("cannot start shadowplane serve")?;
    let mut envoys = Vec::new();
    for edge in EDGES {
        let envoy = Envoy::start(
            &ads_bootstrap(edge, cp.xds_port, "GRPC"),
            EnvoyOpts::default(),
        )
        .await
        .with_context(|| format!("cannot start Envoy {edge}\n{}", cp.log()))?;
        envoys.push(envoy);
    }
    let mut stack = Stack {
        cp,
        envoys,
        urls: Vec::new(),
        service: s.service.clone(),
        instances: Arc::new(Instances::default()),
        client: Client::with_timeout(Duration::from_secs(5)),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for e in &stack.envoys {
        loop {
            let url = tokio::time::timeout(
                Duration::from_secs(2),
                e.listener_url("ingress", &s.load.path),
            )
            .await;
            if let Ok(url) = url
                && let Ok((200, _, _)) = stack.client.get(&url, &[]).await
            {
                stack.urls.push(url);
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy never served {} within 60 s\n{}",
                    s.service,
                    stack.cp.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let first = stack.lifecycle().await?;
    let groups = (
        first["primary"].as_str().unwrap_or_default().to_string(),
        first["shadow"].as_str().unwrap_or_default().to_string(),
    );
    // Wait for the scenario's epoch.
    let start_wall = now_unix_ms();
    if start_wall < epoch {
        tokio::time::sleep(Duration::from_millis(epoch - start_wall)).await;
    }
    let started = Instant::now();
    let epoch_instant = started - Duration::from_millis(now_unix_ms().saturating_sub(epoch));
    let clock = move || s.start_s + epoch_instant.elapsed().as_secs_f64() * s.time_scale;
    // An event's wall time (`at_ms`) on the scenario clock.
    let scenario_time = |e: &Value| {
        let at = e["at_ms"].as_u64().unwrap_or(0) as f64;
        round(s.start_s + (at - epoch as f64) / 1000.0 * s.time_scale)
    };

    let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let load = tokio::spawn(load(
        s.clone(),
        stack.urls.clone(),
        epoch_instant,
        requests.clone(),
    ));

    let mut injections = s.injections().into_iter().peekable();
    // Price changes reach the control plane as a new config and a reload, as an operator's
    // pricing feed would: shadowplane reads prices from its config.
    let mut price_changes: Vec<f64> = s
        .prices
        .iter()
        .map(|p| p.at_s)
        .filter(|&at| at > s.start_s)
        .collect();
    price_changes.sort_by(f64::total_cmp);
    price_changes.dedup();
    let mut price_changes = price_changes.into_iter().peekable();
    let mut injected = Vec::new();
    let mut ticks: Vec<Tick> = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    let mut since = 0u64;
    let mut seen_requests = 0usize;
    let mut reactive_failed = 0u32;
    let mut reactive_next = s.start_s + s.reactive.check_interval_s;
    let mut reactive_moves = Vec::new();
    let mut reactive_from = 0usize;
    let end = s.end_s();
    let mut next_tick = Instant::now();
    loop {
        let t = clock();
        if t >= end {
            break;
        }
        // Faults, at their scenario time, on the machines they were written for.
        while let Some(inj) = injections.next_if(|i| i.at_s <= t) {
            let now = stack.lifecycle().await?;
            let role = if inj.group == s.primary.name {
                "primary"
            } else {
                "shadow"
            };
            let group = now[role].as_str().unwrap_or_default().to_string();
            for addr in stack.addrs(&group).await? {
                let url = format!("http://{addr}/_control/effects");
                match stack
                    .client
                    .request(
                        "POST".parse()?,
                        &url,
                        &[("content-type", "application/json")],
                        inj.effect_json.clone().into(),
                    )
                    .await
                {
                    Ok((200, _, _)) => {}
                    Ok((st, _, b)) => bail!("{url} answered {st}: {}", String::from_utf8_lossy(&b)),
                    Err(e) => bail!("cannot inject into {url}: {e:#}"),
                }
            }
            injected.push((inj.at_s, group, inj.effect.kind().to_string()));
        }
        if let Some(at) = price_changes.next_if(|&at| at <= t) {
            let text = config(
                s,
                p,
                policy,
                epoch,
                at,
                stack.cp.xds_port,
                stack.cp.admin_port,
            );
            std::fs::write(stack.cp.config_path(), text)
                .with_context(|| format!("cannot write {}", stack.cp.config_path().display()))?;
            match stack.cp.reload(&[]).await {
                Ok((200, _)) => injected.push((at, "prices".to_string(), "price".to_string())),
                Ok((st, v)) => bail!("the reload at a price change answered {st}: {v}"),
                Err(e) => bail!("cannot reload at a price change: {e:#}"),
            }
        }
        let view = stack.lifecycle().await.unwrap_or(Value::Null);
        let fresh = stack.cp.events(since).await.unwrap_or_default();
        for mut e in fresh {
            since = since.max(e["seq"].as_u64().unwrap_or(0));
            if e["event"] == "lifecycle" {
                e["t_s"] = json!(scenario_time(&e));
                events.push(e);
            }
        }
        let (window, all): (Vec<Request>, usize) = {
            let r = requests.lock().map(|r| r.clone()).unwrap_or_default();
            let n = r.len();
            (r.into_iter().skip(seen_requests).collect(), n)
        };
        seen_requests = all;
        let tick = make_tick(s, &view, &window, t, started.elapsed().as_secs_f64());
        // The reactive baseline checks the clients' p99 and error rate each interval.
        if policy == Policy::Reactive && t >= reactive_next {
            let r = requests
                .lock()
                .map(|r| r[reactive_from.min(r.len())..].to_vec())
                .unwrap_or_default();
            reactive_from += r.len();
            reactive_next += s.reactive.check_interval_s;
            let (p99, err) = (p99_ms(&r), error_rate(&r));
            let failed = p99.is_some_and(|p| p > s.reactive.p99_ms) || err > s.reactive.error_rate;
            reactive_failed = if failed { reactive_failed + 1 } else { 0 };
            let phase = view["phase"].as_str().unwrap_or("");
            if reactive_failed >= s.reactive.failed_checks
                && (phase == "cold" || phase == "watching")
            {
                stack.op("promote").await?;
                reactive_moves.push(round(t));
                reactive_failed = 0;
            }
        }
        progress(&tick, &events);
        ticks.push(tick);
        next_tick += TICK;
        let now = Instant::now();
        if next_tick > now {
            tokio::time::sleep(next_tick - now).await;
        }
    }
    let requests = match load.await {
        Ok(()) => requests.lock().map(|r| r.clone()).unwrap_or_default(),
        Err(e) => bail!("the load generator failed: {e}"),
    };
    // The last events.
    for mut e in stack.cp.events(since).await.unwrap_or_default() {
        if e["event"] == "lifecycle" {
            e["t_s"] = json!(scenario_time(&e));
            events.push(e);
        }
    }
    let log = stack.cp.log();
    stack.cp.kill();
    drop(stack);
    Ok(Outcome {
        policy,
        scenario: s.clone(),
        events,
        ticks,
        requests,
        groups,
        injected,
        reactive_moves,
        log,
    })
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The open-loop load: the scenario's planned requests, each sent at its time (through the
/// Envoys in turn) with its session key, at most `load.concurrency` in flight.
async fn load(s: Scenario, urls: Vec<String>, epoch: Instant, out: Arc<Mutex<Vec<Request>>>) {
    let client = Client::with_timeout(REQUEST_TIMEOUT);
    let slots = Arc::new(Semaphore::new(s.load.concurrency.max(1) as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in s.requests().enumerate() {
        let at = epoch + r.wall_offset;
        let now = Instant::now();
        if at > now {
            tokio::time::sleep(at - now).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, out) = (client.clone(), out.clone());
        let url = urls[i % urls.len()].clone();
        let header = s.load.session_header.clone();
        let key = s.load.session_key(r.session);
        tasks.spawn(async move {
            let reply = client.get(&url, &[(header.as_str(), key.as_str())]).await;
            let latency_ms = at.elapsed().as_secs_f64() * 1000.0;
            let (status, served_by) = match &reply {
                Ok((status, h, _)) => (
                    *status,
                    h.get("x-served-by")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                ),
                Err(_) => (0, None),
            };
            if let Ok(mut o) = out.lock() {
                o.push(Request {
                    t_s: r.scenario_s,
                    latency_ms,
                    status,
                    served_by,
                });
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The 99th percentile of the answered requests' latencies, ms.
pub fn p99_ms(r: &[Request]) -> Option<f64> {
    let mut v: Vec<f64> = r
        .iter()
        .filter(|r| r.status != 0)
        .map(|r| r.latency_ms)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

/// A failed request: no answer, or a 5xx.
pub fn failed(r: &Request) -> bool {
    r.status == 0 || r.status >= 500
}

/// A failure the service did not answer itself (no answer at all, or Envoy's own 5xx without
/// the upstream's `x-served-by`): what a migration step could cause. The profiles' own
/// errors come from an upstream and name it.
pub fn failed_in_transit(r: &Request) -> bool {
    failed(r) && r.served_by.is_none()
}

fn error_rate(r: &[Request]) -> f64 {
    if r.is_empty() {
        return 0.0;
    }
    r.iter().filter(|r| failed(r)).count() as f64 / r.len() as f64
}

/// What the groups running at `t` cost per hour by the scenario's prices: every group the
/// control plane reports (primary, shadow, the old primary on standby), at its recorded
/// instance type and count, whatever share of traffic it serves (an idle group still runs).
/// Before the control plane reports its groups, the scenario's two starting fleets.
fn fleet_cost_per_hour(s: &Scenario, view: &Value, t: f64) -> Option<f64> {
    let reported = view["groups"].as_array().filter(|g| !g.is_empty());
    match reported {
        Some(groups) => groups
            .iter()
            .map(|g| {
                let c = &g["config"];
                let price = s.price_at(c["instance_type"].as_str()?, t)?;
                Some(price * c["instances"].as_f64()?)
            })
            .sum(),
        None => [&s.primary, &s.shadow]
            .iter()
            .map(|g| s.cost_per_hour(g, t))
            .sum(),
    }
}

fn make_tick(s: &Scenario, view: &Value, window: &[Request], t: f64, wall_s: f64) -> Tick {
    let primary = view["primary"].as_str().unwrap_or_default().to_string();
    let pg = view["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == primary.as_str()).cloned())
        .unwrap_or(Value::Null);
    let f = &pg["forecast"]["p99_ms"];
    let forecast = match (f["mean"].as_f64(), f["lower"].as_f64(), f["upper"].as_f64()) {
        // Latency is not negative, whatever a Gaussian interval says.
        (Some(m), Some(l), Some(u)) => Some([m.max(0.0), l.max(0.0), u.max(0.0)]),
        _ => None,
    };
    let shadow_percent = view["weights"]["shadow"].as_f64().unwrap_or(0.0);
    let cost = fleet_cost_per_hour(s, view, t);
    let causes = view["anomalies"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|a| a["causes"].as_array())
        .map(|c| {
            c.iter()
                .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["strength"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut served = std::collections::BTreeMap::new();
    for r in window {
        if let Some(g) = &r.served_by {
            *served.entry(g.clone()).or_insert(0) += 1;
        }
    }
    Tick {
        served,
        wall_s: round(wall_s),
        t_s: round(t),
        scenario_phase: s.phase_at(t).to_string(),
        phase: view["phase"].as_str().unwrap_or("?").to_string(),
        primary,
        shadow: view["shadow"].as_str().map(str::to_string),
        shadow_percent,
        forecast,
        model_p99_ms: pg["forecast"]["last_p99_ms"].as_f64(),
        client_p99_ms: p99_ms(window),
        requests: window.len() as u64,
        failed: window.iter().filter(|r| failed(r)).count() as u64,
        cost_per_hour: cost,
        causes,
        anomalies: view["anomalies"].as_array().map_or(0, Vec::len),
        decision: view["last_decision"]["reason"].as_str().map(str::to_string),
    }
}

/// The built programs, or what to run to build them.
pub fn programs(root: &Path) -> Result<Programs> {
    let p = Programs {
        shadowplane: root.join("target/release/shadowplane"),
        upstream: root.join("target/release/example-upstream"),
        wasm: root.join("target/wasm32-wasip1/wasm/shadowplane_filter.wasm"),
    };
    for f in [&p.shadowplane, &p.upstream, &p.wasm] {
        if !f.is_file() {
            bail!("{} is missing: the demo builds it first", f.display());
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowplane_example_upstream::scenario;

    fn programs() -> Programs {
        Programs {
            shadowplane: "/x/shadowplane".into(),
            upstream: "/x/example-upstream".into(),
            wasm: "/x/f.wasm".into(),
        }
    }

    #[test]
    fn the_cost_is_that_of_the_groups_the_control_plane_runs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
        let all = scenario::load_dir(&dir).unwrap();
        let s = all.iter().find(|s| s.name == "price-rise").unwrap();
        let group = |ty: &str, n: u32| json!({"config": {"instance_type": ty, "instances": n}});
        let at = |t: f64| {
            s.cost_per_hour(&s.primary, t).unwrap() + s.cost_per_hour(&s.shadow, t).unwrap()
        };
        // No groups reported yet: the scenario's two starting fleets.
        assert_eq!(fleet_cost_per_hour(s, &json!({}), 1300.0), Some(at(1300.0)));
        // After the swap to the cheaper variant: two standard groups and the old spot primary
        // on standby, at the prices of the time.
        let view = json!({"groups": [group("standard", 1), group("standard", 1), group("spot-standard", 1)]});
        let standard = s.price_at("standard", 2500.0).unwrap();
        let spot = s.price_at("spot-standard", 2500.0).unwrap();
        let cost = fleet_cost_per_hour(s, &view, 2500.0).unwrap();
        assert!((cost - (2.0 * standard + spot)).abs() < 1e-9, "{cost}");
        // A type without a price gives no figure rather than a wrong one.
        let unknown = json!({"groups": [group("gpu", 1)]});
        assert_eq!(fleet_cost_per_hour(s, &unknown, 2500.0), None);
    }

    #[test]
    fn every_shipped_scenario_renders_a_lifecycle_config() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
        let all = scenario::load_dir(&dir).unwrap();
        assert!(all.len() >= 7, "{}", all.len());
        for s in &all {
            for policy in [Policy::Predictive, Policy::Reactive, Policy::None] {
                let text = config(s, &programs(), policy, 1_000, s.start_s, 18000, 18001);
                let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}\n{text}", s.name));
                let l = &y["services"][0]["lifecycle"];
                assert_eq!(y["services"][0]["name"].as_str(), Some(s.service.as_str()));
                assert_eq!(
                    l["group"]["workload"]["command"]["program"].as_str(),
                    Some("/x/example-upstream")
                );
                let args: Vec<&str> = l["group"]["workload"]["command"]["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .filter_map(|a| a.as_str())
                    .collect();
                assert!(args.contains(&"--epoch-unix-ms"), "{args:?}");
                assert_eq!(l["trigger"]["slo_p99_ms"].as_f64(), Some(s.slo.p99_ms));
                assert_eq!(l["trigger"]["horizon"].as_u64(), Some(HORIZON as u64));
                let cold = l["policy"]["cold_ms"].as_u64().unwrap();
                match policy {
                    // Cold ends before the fault, after the models have seen the normal
                    // service for a while.
                    Policy::Predictive => assert!((20_000..=120_000).contains(&cold), "{cold}"),
                    // The other policies never leave cold by themselves.
                    _ => assert_eq!(cold, 24 * 3_600_000),
                }
                assert_eq!(
                    y["filter"]["session_key"]["header"].as_str(),
                    Some(s.load.session_header.as_str())
                );
            }
        }
    }

    fn req(t_s: f64, latency_ms: f64, status: u16, by: Option<&str>) -> Request {
        Request {
            t_s,
            latency_ms,
            status,
            served_by: by.map(str::to_string),
        }
    }

    #[test]
    fn p99_and_failures_count_what_clients_saw() {
        let mut r: Vec<Request> = (0..99)
            .map(|i| req(0.0, i as f64, 200, Some("a")))
            .collect();
        r.push(req(0.0, 1000.0, 200, Some("a")));
        assert_eq!(p99_ms(&r), Some(98.0));
        r.push(req(0.0, 5.0, 0, None));
        // An unanswered request has no latency to rank.
        assert_eq!(p99_ms(&r), Some(98.0));
        assert!(failed(&r[100]) && failed_in_transit(&r[100]));
        // The service's own 503 names it: not a failure in transit.
        let own = req(0.0, 5.0, 503, Some("a"));
        assert!(failed(&own) && !failed_in_transit(&own));
        let envoy = req(0.0, 5.0, 503, None);
        assert!(failed_in_transit(&envoy));
        assert_eq!(p99_ms(&[]), None);
    }
}
