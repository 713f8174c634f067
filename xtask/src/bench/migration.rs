//! `cargo xtask bench migration`: every shipped scenario under three policies in the same
//! harness as the demo (real Envoys, the filter, `shadowplane serve`, local groups, open-loop
//! load): no action; reactive (a static p99 and error-rate check every interval, traffic
//! moves after N failed checks in a row, as Flagger does); shadowplane's predictive policy.
//!
//! `SHADOWPLANE_BENCH_SCENARIOS=a,b` limits the run to some scenarios (each takes about three
//! minutes per policy). `SHADOWPLANE_BENCH_POLICIES=predictive` runs only those policies and
//! takes the others' rows from their last reports under target/bench/migration/ (marked
//! `reused` in the table and the JSON), running them only where no report is there: after a
//! change to the model only the predictive runs change. Figures go to target/bench/migration.json.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use shadowplane_example_upstream::scenario;

use crate::demo::{self, Policy, Summary};

const POLICIES: [Policy; 3] = [Policy::None, Policy::Reactive, Policy::Predictive];

#[derive(Debug, Serialize)]
struct Row {
    scenario: String,
    fault: bool,
    policy: Policy,
    slo_violating: u64,
    failed: u64,
    failed_in_transit: u64,
    /// Scenario seconds from the fault onset (or the price rise) to the cutover.
    onset_to_cutover_s: Option<f64>,
    cutover_before_breach: Option<bool>,
    migrations: usize,
    cost: Option<f64>,
    /// Taken from an earlier run's report (`SHADOWPLANE_BENCH_POLICIES`), not run now.
    reused: bool,
    summary: Summary,
}

/// Runs the bench.
pub fn run(root: &Path) -> Result<()> {
    crate::setup::setup(root)?;
    let programs = demo::build(root)?;
    let dir = root.join("examples/scenarios");
    let mut scenarios = scenario::load_dir(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Ok(only) = std::env::var("SHADOWPLANE_BENCH_SCENARIOS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        scenarios.retain(|s| only.contains(&s.name.as_str()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut rows = Vec::new();
    let run_policies: Vec<Policy> = match std::env::var("SHADOWPLANE_BENCH_POLICIES") {
        Ok(list) => list
            .split(',')
            .map(|p| {
                <Policy as clap::ValueEnum>::from_str(p.trim(), true)
                    .map_err(|e| anyhow::anyhow!("SHADOWPLANE_BENCH_POLICIES: {e}"))
            })
            .collect::<Result<_>>()?,
        Err(_) => POLICIES.to_vec(),
    };
    for s in &scenarios {
        for policy in POLICIES {
            let base = root
                .join("target/bench/migration")
                .join(format!("{}-{policy:?}", s.name).to_lowercase());
            let reused = !run_policies.contains(&policy) && base.with_extension("json").is_file();
            let summary = if reused {
                let path = base.with_extension("json");
                let doc: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).with_context(|| {
                        format!("cannot read {} to reuse its row", path.display())
                    })?)
                    .with_context(|| format!("{} is not a report", path.display()))?;
                let summary: Summary = serde_json::from_value(doc["summary"].clone())
                    .with_context(|| format!("{}: no summary", path.display()))?;
                println!(
                    "\n== {} under {policy:?}: reused {} ==",
                    s.name,
                    path.display()
                );
                summary
            } else {
                println!("\n== {} under {policy:?} ==", s.name);
                let mut quiet = |_: &demo::run::Tick, _: &[serde_json::Value]| {};
                let outcome = rt.block_on(demo::run::run(s, &programs, policy, &mut quiet))?;
                let summary = demo::summarize(&outcome);
                demo::write_report(&base, &outcome, &summary)?;
                summary
            };
            let onset = s.fault_onset_s().or(s.budget_breach_s(&s.primary));
            let row = Row {
                reused,
                scenario: s.name.clone(),
                fault: s.expects_migration(),
                policy,
                slo_violating: summary.slo_violating,
                failed: summary.failed,
                failed_in_transit: summary.failed_in_transit,
                onset_to_cutover_s: match (onset, summary.cutover_s) {
                    (Some(a), Some(b)) => Some(b - a),
                    _ => None,
                },
                cutover_before_breach: summary.cutover_before_breach,
                migrations: summary.migrations,
                cost: summary.cost,
                summary,
            };
            println!(
                "{}: slo-violating {}, failed {} ({} in transit), migrations {}, cutover before breach {:?}",
                row.scenario,
                row.slo_violating,
                row.failed,
                row.failed_in_transit,
                row.migrations,
                row.cutover_before_breach
            );
            rows.push(row);
        }
    }
    let targets = targets(&rows);
    print_table(&rows, &targets);
    let out = root.join("target/bench/migration.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({
            "bench": "migration",
            "environment": {"nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
            "rows": rows,
            "targets": targets,
        }))?,
    )
    .with_context(|| format!("cannot write {}", out.display()))?;
    println!("\nwritten {}", out.display());
    Ok(())
}

#[derive(Debug, Serialize)]
struct Target {
    name: String,
    met: bool,
    /// False for a figure reported beside the targets but not one of them (a fault that
    /// breaks the SLO the moment it starts leaves nothing to predict).
    judged: bool,
    note: String,
}

/// Scenario seconds within which an SLO breach counts as at the fault's onset.
const STEP_TOLERANCE_S: f64 = 60.0;

fn targets(rows: &[Row]) -> Vec<Target> {
    let mut out = Vec::new();
    let find = |s: &str, p: Policy| rows.iter().find(|r| r.scenario == s && r.policy == p);
    let mut names: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    names.dedup();
    for name in names {
        let Some(pred) = find(name, Policy::Predictive) else {
            continue;
        };
        // A degradation scenario breaks its SLO some time after the fault's onset; a step
        // failure breaks it at once, before any window could show a trend: its figures are
        // reported, not judged against the degradation targets.
        let judged = match (pred.summary.fault_onset_s, pred.summary.slo_breach_s) {
            (Some(onset), Some(breach)) => breach > onset + STEP_TOLERANCE_S,
            _ => true,
        };
        let breach = pred.summary.slo_breach_s.is_some();
        if breach {
            out.push(Target {
                name: format!("{name}: predictive cutover before the SLO breach"),
                met: pred.cutover_before_breach == Some(true),
                judged,
                note: format!(
                    "cutover at {:?} s, breach at {:?} s",
                    pred.summary.cutover_s, pred.summary.slo_breach_s
                ),
            });
            if let Some(re) = find(name, Policy::Reactive) {
                let ratio = if re.slo_violating == 0 {
                    None
                } else {
                    Some(pred.slo_violating as f64 / re.slo_violating as f64)
                };
                out.push(Target {
                    name: format!("{name}: predictive has at least 80% fewer SLO-violating requests than reactive"),
                    met: ratio.is_some_and(|r| r <= 0.2),
                    judged,
                    note: format!(
                        "predictive {}, reactive {} (ratio {})",
                        pred.slo_violating,
                        re.slo_violating,
                        ratio.map_or_else(|| "undefined".into(), |r| format!("{r:.3}"))
                    ),
                });
            }
        }
        if let (Some(budget), None) = (pred.summary.budget_breach_s, pred.summary.slo_breach_s) {
            out.push(Target {
                name: format!("{name}: predictive cutover before the cost budget breaks"),
                met: pred.summary.cutover_s.is_some_and(|c| c < budget),
                judged: true,
                note: format!(
                    "cutover at {:?} s, budget broken at {budget} s",
                    pred.summary.cutover_s
                ),
            });
        }
        if !pred.fault {
            out.push(Target {
                name: format!("{name}: no migration without a fault"),
                met: pred.migrations == 0,
                judged: true,
                note: format!("{} migrations started", pred.migrations),
            });
        }
    }
    let transit: u64 = rows.iter().map(|r| r.failed_in_transit).sum();
    out.push(Target {
        name: "no request failed by a migration step (no answer or Envoy's own 5xx)".into(),
        met: transit == 0,
        judged: true,
        note: format!("{transit} over every run"),
    });
    out
}

fn print_table(rows: &[Row], targets: &[Target]) {
    println!(
        "\n| scenario | policy | SLO-violating | failed (in transit) | onset to cutover s | before breach | migrations | cost |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:?}{} | {} | {} ({}) | {} | {} | {} | {} |",
            r.scenario,
            r.policy,
            if r.reused { " (reused)" } else { "" },
            r.slo_violating,
            r.failed,
            r.failed_in_transit,
            r.onset_to_cutover_s
                .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
            r.cutover_before_breach
                .map_or_else(|| "-".into(), |b| b.to_string()),
            r.migrations,
            r.cost.map_or_else(|| "-".into(), |c| format!("{c:.3}")),
        );
    }
    println!();
    for t in targets {
        println!(
            "[{}] {}: {}",
            match (t.judged, t.met) {
                (false, _) => "reported",
                (true, true) => "met",
                (true, false) => "NOT met",
            },
            t.name,
            t.note
        );
    }
}
