//! `cargo xtask demo`: the whole idea on this machine. Set-up, build, then one scenario
//! (creeping degradation by default) run for real in compressed time: `shadowplane serve`
//! with a lifecycle, two Envoys with the filter, the groups as local processes, an open-loop
//! load with sessions. A live screen shows the phase, the weights, the predicted against the
//! actual p99, anomalies, root causes and decisions; the run ends with a summary and a report
//! (JSON and a self-contained HTML page with plots).

mod report;
pub mod run;

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shadowplane_example_upstream::scenario;

use crate::cmd;
pub use run::Policy;
use run::{Outcome, Tick};

/// The demo's options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The scenario: a file name under examples/scenarios, without `.yaml`
    #[arg(long, default_value = "creeping-degradation")]
    pub scenario: String,
    /// No live screen: a line per event and every ten seconds
    #[arg(long)]
    pub headless: bool,
    /// Where the report goes: PATH.json and PATH.html (default target/demo/SCENARIO)
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// How the run reacts: predictive (shadowplane), reactive (threshold checks) or none
    #[arg(long, value_enum, default_value = "predictive")]
    pub policy: Policy,
}

/// Builds what a run needs: the control plane and the example upstream (release), the filter.
pub fn build(root: &Path) -> Result<run::Programs> {
    cmd::run(cmd::cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "shadowplane",
        "-p",
        "shadowplane-example-upstream",
    ]))?;
    cmd::build_wasm(root, &["shadowplane-filter"])?;
    run::programs(root)
}

/// `cargo xtask demo`: returns the run's summary.
pub fn demo(root: &Path, opts: &Options) -> Result<Summary> {
    crate::setup::setup(root)?;
    let programs = build(root)?;
    let s = scenario::find(&root.join("examples/scenarios"), &opts.scenario)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let live = !opts.headless && std::io::stdout().is_terminal();
    println!(
        "\nscenario {}: {}\n{} of scenario time in {:.0} s ({}x), policy {:?}\n",
        s.name,
        s.description.trim(),
        hms(s.duration_s),
        s.duration_s / s.time_scale,
        s.time_scale,
        opts.policy
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut screen = Screen::new(live, &s);
    let mut show = |t: &Tick, events: &[Value]| screen.show(t, events);
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run::run(&s, &programs, opts.policy, &mut show) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted: everything the demo started is stopped"),
        }
    })?;
    // Everything started is stopped by now (dropped with the run), the runtime too.
    drop(rt);
    let summary = summarize(&outcome);
    let base = opts
        .report
        .clone()
        .unwrap_or_else(|| root.join("target/demo").join(&s.name));
    let (json_path, html_path) = write_report(&base, &outcome, &summary)?;
    print_summary(&summary);
    println!(
        "\nreport: {}\n        {}",
        html_path.display(),
        json_path.display()
    );
    Ok(summary)
}

/// Writes PATH.json and PATH.html; returns both paths.
pub fn write_report(
    base: &Path,
    outcome: &Outcome,
    summary: &Summary,
) -> Result<(PathBuf, PathBuf)> {
    if let Some(dir) = base.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json_path = base.with_extension("json");
    let html_path = base.with_extension("html");
    let doc = json!({"summary": summary, "run": outcome});
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&html_path, report::html(outcome, summary))
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    let log = base.with_extension("shadowplane.log");
    std::fs::write(&log, &outcome.log)
        .with_context(|| format!("cannot write {}", log.display()))?;
    Ok((json_path, html_path))
}

/// What a run comes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Policy.
    pub policy: Policy,
    /// When the primary's fault began, scenario seconds.
    pub fault_onset_s: Option<f64>,
    /// When the primary, serving alone, would break the SLO by its profile.
    pub slo_breach_s: Option<f64>,
    /// When the primary went over the cost budget by the prices, if it did.
    pub budget_breach_s: Option<f64>,
    /// When the migration was decided (first `migration_started`), with its reason.
    pub migration_started_s: Option<f64>,
    /// The decision's reason.
    pub reason: Option<String>,
    /// When all the traffic was on the shadow (cutover).
    pub cutover_s: Option<f64>,
    /// Cutover came before the SLO breach.
    pub cutover_before_breach: Option<bool>,
    /// Migrations started (including any the reactive policy started).
    pub migrations: usize,
    /// Rollbacks.
    pub rollbacks: usize,
    /// Requests sent.
    pub requests: u64,
    /// Requests failed (no answer or 5xx).
    pub failed: u64,
    /// Requests sent between the migration's start and its cutover.
    pub requests_during_migration: u64,
    /// Of those, failed.
    pub failed_during_migration: u64,
    /// Requests failed without an upstream's answer (no answer, or Envoy's own 5xx): the
    /// failures a migration step could cause; the profiles' own errors are not among them.
    pub failed_in_transit: u64,
    /// Answered requests slower than the SLO's p99 limit (failed ones are counted in
    /// `failed`: the profiles' base error rates fail some whatever a policy does).
    pub slo_violating: u64,
    /// Cost over the run by the scenario's prices (both groups run), currency units.
    pub cost: Option<f64>,
}

fn first_event<'a>(o: &'a Outcome, kind: &str) -> Option<&'a Value> {
    o.events.iter().find(|e| e["kind"] == kind)
}

/// Counts and times from a run.
pub fn summarize(o: &Outcome) -> Summary {
    let s = &o.scenario;
    let started = first_event(o, "migration_started");
    let started_s = started.and_then(|e| e["t_s"].as_f64());
    let cutover_s = o
        .events
        .iter()
        .find(|e| e["kind"] == "weights_applied" && e["shadow_percent"] == 100)
        .and_then(|e| e["t_s"].as_f64());
    let breach = s.slo_breach_s(&s.primary);
    let during = |r: &&run::Request| {
        started_s.is_some_and(|a| r.t_s >= a) && cutover_s.is_none_or(|b| r.t_s <= b)
    };
    let migrating: Vec<&run::Request> = o.requests.iter().filter(during).collect();
    // Cost: both fleets run the whole time; integrate the ticks' cost per hour.
    let cost = {
        let mut total = 0.0;
        let mut any = false;
        for w in o.ticks.windows(2) {
            if let Some(c) = w[0].cost_per_hour {
                any = true;
                total += c * (w[1].t_s - w[0].t_s) / 3600.0;
            }
        }
        any.then_some((total * 1000.0).round() / 1000.0)
    };
    Summary {
        scenario: s.name.clone(),
        policy: o.policy,
        fault_onset_s: s.fault_onset_s(),
        slo_breach_s: breach,
        budget_breach_s: s.budget_breach_s(&s.primary),
        migration_started_s: started_s,
        reason: started.and_then(|e| e["reason"].as_str().map(str::to_string)),
        cutover_s,
        cutover_before_breach: match (cutover_s, breach) {
            (Some(c), Some(b)) => Some(c < b),
            (None, Some(_)) => Some(false),
            _ => None,
        },
        migrations: o
            .events
            .iter()
            .filter(|e| e["kind"] == "migration_started")
            .count(),
        rollbacks: o
            .events
            .iter()
            .filter(|e| e["kind"] == "rolled_back")
            .count(),
        requests: o.requests.len() as u64,
        failed: o.requests.iter().filter(|r| run::failed(r)).count() as u64,
        requests_during_migration: migrating.len() as u64,
        failed_during_migration: migrating.iter().filter(|r| run::failed(r)).count() as u64,
        failed_in_transit: o
            .requests
            .iter()
            .filter(|r| run::failed_in_transit(r))
            .count() as u64,
        slo_violating: o
            .requests
            .iter()
            .filter(|r| r.status != 0 && r.latency_ms > s.slo.p99_ms)
            .count() as u64,
        cost,
    }
}

fn hms(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn opt_hms(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_string(), hms)
}

fn print_summary(s: &Summary) {
    println!("\n== summary: {} ({:?}) ==", s.scenario, s.policy);
    println!("fault onset            {}", opt_hms(s.fault_onset_s));
    println!("SLO breach (by profile) {}", opt_hms(s.slo_breach_s));
    println!("migration decided      {}", opt_hms(s.migration_started_s));
    if let Some(r) = &s.reason {
        println!("  because              {r}");
    }
    println!("cutover                {}", opt_hms(s.cutover_s));
    match s.cutover_before_breach {
        Some(true) => println!("cutover came BEFORE the SLO breach"),
        Some(false) => println!("cutover did NOT come before the SLO breach"),
        None => {}
    }
    println!(
        "requests {} (failed {}), during the migration {} (failed {}), SLO-violating {}",
        s.requests,
        s.failed,
        s.requests_during_migration,
        s.failed_during_migration,
        s.slo_violating
    );
    println!(
        "failed without an upstream's answer (what a migration could cause): {}",
        s.failed_in_transit
    );
    println!("migrations {}, rollbacks {}", s.migrations, s.rollbacks);
    if let Some(c) = s.cost {
        println!("cost {c:.3}");
    }
}

/// The live screen (redrawn in place on a terminal) or, headless, a line per event and every
/// ten ticks.
struct Screen {
    live: bool,
    slo_ms: f64,
    shown_events: usize,
    ticks: usize,
    recent: Vec<String>,
}

impl Screen {
    fn new(live: bool, s: &scenario::Scenario) -> Screen {
        Screen {
            live,
            slo_ms: s.slo.p99_ms,
            shown_events: 0,
            ticks: 0,
            recent: Vec::new(),
        }
    }

    fn show(&mut self, t: &Tick, events: &[Value]) {
        self.ticks += 1;
        let mut new = Vec::new();
        for e in &events[self.shown_events.min(events.len())..] {
            new.push(format!(
                "{}  {:<18} {}",
                hms(e["t_s"].as_f64().unwrap_or(0.0)),
                e["kind"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("")
            ));
        }
        self.shown_events = events.len();
        let forecast = t.forecast.map_or_else(
            || "warming up".to_string(),
            |[m, l, u]| format!("{m:6.1} ms [{l:.1}, {u:.1}]"),
        );
        let actual = t
            .client_p99_ms
            .map_or_else(|| "-".into(), |p| format!("{p:6.1} ms"));
        let line = format!(
            "{} {:<10} {:<9} shadow {:>3.0}%  p99 actual {actual}  forecast {forecast}  SLO {:.0} ms  rq {} failed {}",
            hms(t.t_s),
            t.scenario_phase,
            t.phase,
            t.shadow_percent,
            self.slo_ms,
            t.requests,
            t.failed
        );
        if self.live {
            self.recent.extend(new);
            let keep = self.recent.len().saturating_sub(12);
            self.recent.drain(..keep);
            let mut out = String::from("\x1b[2J\x1b[H");
            out += &format!("shadowplane demo   {}\n\n", line);
            out += &format!(
                "primary {}  shadow {}\n",
                t.primary,
                t.shadow.as_deref().unwrap_or("-")
            );
            out += &format!("anomalies so far {}\n", t.anomalies);
            if !t.causes.is_empty() {
                let c: Vec<String> = t
                    .causes
                    .iter()
                    .map(|(n, s)| format!("{n} {s:.2}"))
                    .collect();
                out += &format!("likely causes: {}\n", c.join(", "));
            }
            if let Some(d) = &t.decision {
                out += &format!("last decision: {d}\n");
            }
            out += "\nevents:\n";
            for e in &self.recent {
                out += &format!("  {e}\n");
            }
            print!("{out}");
        } else {
            for e in new {
                println!("  * {e}");
            }
            if self.ticks % 10 == 1 {
                println!("{line}");
            }
        }
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use run::Request;

    fn outcome() -> Outcome {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
        let s = scenario::find(&dir, "creeping-degradation").unwrap();
        let ev = |t_s: f64, kind: &str, pct: u32| json!({"event": "lifecycle", "kind": kind, "t_s": t_s, "shadow_percent": pct, "reason": "r"});
        let req = |t_s: f64, ms: f64, status: u16, by: Option<&str>| Request {
            t_s,
            latency_ms: ms,
            status,
            served_by: by.map(str::to_string),
        };
        let ticks = (0..=3600)
            .step_by(20)
            .map(|t| Tick {
                t_s: t as f64,
                requests: 100,
                cost_per_hour: Some(0.4),
                forecast: Some([40.0, 30.0, 50.0]),
                client_p99_ms: Some(45.0),
                shadow_percent: if t >= 2000 { 100.0 } else { 0.0 },
                ..Tick::default()
            })
            .collect();
        Outcome {
            policy: Policy::Predictive,
            events: vec![
                ev(1800.0, "migration_started", 0),
                ev(1805.0, "weights_applied", 5),
                ev(2000.0, "weights_applied", 100),
            ],
            ticks,
            requests: vec![
                req(100.0, 20.0, 200, Some("a")),
                req(1900.0, 150.0, 200, Some("a")),
                req(1950.0, 20.0, 503, Some("a")),
                req(1960.0, 20.0, 0, None),
                req(3000.0, 20.0, 200, Some("b")),
            ],
            groups: ("a".into(), "b".into()),
            injected: vec![],
            reactive_moves: vec![],
            log: String::new(),
            scenario: s,
        }
    }

    #[test]
    fn the_summary_counts_the_migration_and_its_requests() {
        let o = outcome();
        let s = summarize(&o);
        assert_eq!(s.migration_started_s, Some(1800.0));
        assert_eq!(s.cutover_s, Some(2000.0));
        // The profile breaks the 100 ms SLO after 40 minutes; the cutover at 33 was before.
        assert!(s.slo_breach_s.is_some_and(|b| b > 2000.0), "{s:?}");
        assert_eq!(s.cutover_before_breach, Some(true));
        assert_eq!((s.requests, s.failed, s.failed_in_transit), (5, 2, 1));
        assert_eq!(
            (s.requests_during_migration, s.failed_during_migration),
            (3, 2)
        );
        // Answered, and slower than the SLO.
        assert_eq!(s.slo_violating, 1);
        assert_eq!(s.migrations, 1);
        // 0.4 an hour for the hour, in 20 s steps.
        assert!(
            s.cost.is_some_and(|c| (c - 0.4).abs() < 0.01),
            "{:?}",
            s.cost
        );
    }

    #[test]
    fn a_written_summary_reads_back_the_same() {
        // The migration bench reuses earlier runs' rows from their reports.
        let s = summarize(&outcome());
        let json = serde_json::to_value(&s).unwrap();
        let back: Summary = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.policy, Policy::Predictive);
    }

    #[test]
    fn the_report_is_one_page_with_four_plots_and_the_events() {
        let o = outcome();
        let s = summarize(&o);
        let html = report::html(&o, &s);
        assert_eq!(html.matches("<svg").count(), 4);
        assert_eq!(html.matches("</svg>").count(), 4);
        assert!(html.contains("migration_started"), "no events table");
        assert!(html.contains("SLO 100 ms"));
        // Self-contained: nothing fetched.
        assert!(!html.contains("<script") && !html.contains("src=\"http"));
        let dir = tempfile_dir();
        let (json_path, html_path) = write_report(&dir.join("r"), &o, &s).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(json_path).unwrap()).unwrap();
        assert_eq!(v["summary"]["cutover_s"], 2000.0);
        assert_eq!(v["run"]["ticks"].as_array().map(Vec::len), Some(181));
        assert!(html_path.is_file());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-demo-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
