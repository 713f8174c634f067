//! `cargo xtask eval nab`: the anomaly detector and the forecaster measured on the labelled
//! NAB series in `../shared/data/nab` (or `SHADOWPLANE_NAB_DATA`).
//!
//! The real `shadowplane detect` (release build) scores every file, one process per file, and
//! the NAB rules (`shadowplane_model::nab`) score the output for the standard, reward-low-FP
//! and reward-low-FN profiles, each at its best corpus-wide threshold. Forecast accuracy is
//! measured in process with the library's default forecaster: one-step MASE against
//! seasonal-naive over the same points, and the coverage of the nominal 95% interval, both on
//! points the forecaster had not seen. The table goes to stdout, the figures to
//! `target/eval/nab.json`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use shadowplane_model::nab::{self, File, PROFILES, Window};
use shadowplane_model::{Forecaster, ForecasterParams, ModelKind};

use crate::cmd;

/// The evaluations `run` knows.
const KNOWN: &[&str] = &["nab"];
/// The timestamp layout of the NAB files and labels.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";
/// Nominal coverage of the interval whose coverage is measured.
const CONFIDENCE: f64 = 0.95;

/// Runs the evaluation called `name`.
pub fn run(root: &Path, name: &str) -> Result<()> {
    match name {
        "nab" => nab_eval(root),
        _ => bail!(
            "unknown evaluation `{name}`: known evaluations are {}",
            KNOWN.join(", ")
        ),
    }
}

/// The data directory: `SHADOWPLANE_NAB_DATA`, else `../shared/data/nab` from the workspace,
/// else the copy in crates/model/testdata/nab (a clone without the shared folder beside it).
fn data_dir(root: &Path) -> PathBuf {
    std::env::var_os("SHADOWPLANE_NAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shared = root.join("../shared/data/nab");
            if shared.is_dir() {
                shared
            } else {
                root.join("crates/model/testdata/nab")
            }
        })
}

#[derive(Serialize)]
struct ProfileResult {
    profile: &'static str,
    score: f64,
    threshold: f64,
    tp: usize,
    fp: usize,
    fn_: usize,
}

#[derive(Serialize)]
struct FileResult {
    file: String,
    rows: usize,
    windows: usize,
    /// At the standard profile's threshold.
    standard_raw: f64,
    tp: usize,
    fp: usize,
    fn_: usize,
    mase: Option<f64>,
    coverage: Option<f64>,
    model: Option<&'static str>,
}

#[derive(Serialize)]
struct Report {
    data: String,
    files: usize,
    windows: usize,
    rows: usize,
    detect_seconds: f64,
    profiles: Vec<ProfileResult>,
    /// Pooled over every file: one-step MAE of the forecaster over that of seasonal-naive.
    mase: Option<f64>,
    /// Pooled over every file: held-out points inside the nominal 95% interval.
    coverage_95: Option<f64>,
    forecast_points: usize,
    per_file: Vec<FileResult>,
}

struct Series {
    name: String,
    times: Vec<i64>,
    values: Vec<f64>,
    windows: Vec<Window>,
    scores: Vec<f64>,
}

fn nab_eval(root: &Path) -> Result<()> {
    let data = data_dir(root);
    let labels_path = data.join("windows.json");
    let labels: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(&fs::read_to_string(&labels_path).with_context(|| {
            format!(
                "cannot read {} (set SHADOWPLANE_NAB_DATA)",
                labels_path.display()
            )
        })?)
        .with_context(|| format!("{} is not a map of file to windows", labels_path.display()))?;
    ensure!(
        !labels.is_empty(),
        "{} names no file",
        labels_path.display()
    );

    cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["build", "--release", "-p", "shadowplane"]),
    )?;
    let bin = root.join("target/release/shadowplane");
    let out_dir = root.join("target/eval/nab");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;

    let mut all = Vec::with_capacity(labels.len());
    let started = Instant::now();
    for (name, windows) in &labels {
        let input = data.join(name);
        let output = out_dir.join(name.replace('/', "__"));
        cmd::output(
            std::process::Command::new(&bin)
                .arg("detect")
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&output),
        )?;
        let (times, values) = read_series(&input)?;
        let scores = read_scores(&output, times.len())?;
        let mut rows = Vec::with_capacity(windows.len());
        for (a, b) in windows {
            let (a, b) = (parse_time(a)?, parse_time(b)?);
            rows.push(
                nab::window_rows(&times, a, b)
                    .with_context(|| format!("{name}: window {a}..{b} holds no row"))?,
            );
        }
        all.push(Series {
            name: name.clone(),
            times,
            values,
            windows: rows,
            scores,
        });
    }
    let detect_seconds = started.elapsed().as_secs_f64();

    let files: Vec<File<'_>> = all
        .iter()
        .map(|s| File {
            scores: &s.scores,
            windows: &s.windows,
        })
        .collect();
    let profiles: Vec<ProfileResult> = PROFILES
        .iter()
        .map(|&p| {
            let s = nab::sweep(&files, p);
            ProfileResult {
                profile: p.name,
                score: s.normalised,
                threshold: s.threshold,
                tp: s.tally.tp,
                fp: s.tally.fp,
                fn_: s.tally.fn_,
            }
        })
        .collect();

    let threshold = profiles[0].threshold;
    let (mut abs_model, mut abs_base, mut inside, mut counted) = (0.0, 0.0, 0usize, 0usize);
    let mut per_file = Vec::with_capacity(all.len());
    for s in &all {
        let detections: Vec<bool> = s.scores.iter().map(|&x| x >= threshold).collect();
        let t = nab::score(&detections, &s.windows, nab::STANDARD);
        let acc = forecast_accuracy(&s.times, &s.values)?;
        abs_model += acc.abs_model;
        abs_base += acc.abs_base;
        inside += acc.inside;
        counted += acc.points;
        per_file.push(FileResult {
            file: s.name.clone(),
            rows: s.times.len(),
            windows: s.windows.len(),
            standard_raw: t.raw,
            tp: t.tp,
            fp: t.fp,
            fn_: t.fn_,
            mase: (acc.abs_base > 0.0).then(|| acc.abs_model / acc.abs_base),
            coverage: (acc.points > 0).then(|| acc.inside as f64 / acc.points as f64),
            model: acc.model.map(ModelKind::name),
        });
    }
    let report = Report {
        data: data.display().to_string(),
        files: all.len(),
        windows: all.iter().map(|s| s.windows.len()).sum(),
        rows: all.iter().map(|s| s.times.len()).sum(),
        detect_seconds,
        profiles,
        mase: (abs_base > 0.0).then(|| abs_model / abs_base),
        coverage_95: (counted > 0).then(|| inside as f64 / counted as f64),
        forecast_points: counted,
        per_file,
    };
    print_table(&report);
    let json_path = root.join("target/eval/nab.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!("figures written to {}", json_path.display());
    Ok(())
}

struct Accuracy {
    abs_model: f64,
    abs_base: f64,
    inside: usize,
    points: usize,
    model: Option<ModelKind>,
}

/// One-step errors of the default forecaster and of its seasonal-naive candidate on every
/// point both had forecast before seeing it, and the coverage of the 95% interval there.
fn forecast_accuracy(times: &[i64], values: &[f64]) -> Result<Accuracy> {
    let mut f = Forecaster::new(ForecasterParams::default().check()?, 0);
    let mut acc = Accuracy {
        abs_model: 0.0,
        abs_base: 0.0,
        inside: 0,
        points: 0,
        model: None,
    };
    for (&t, &v) in times.iter().zip(values) {
        let chosen = f.predict(1, CONFIDENCE)?.ready();
        let base = f
            .predict_with(ModelKind::SeasonalNaive, 1, CONFIDENCE)?
            .ready();
        if let (Some(p), Some(b)) = (chosen, base) {
            acc.abs_model += (v - p.mean).abs();
            acc.abs_base += (v - b.mean).abs();
            acc.inside += usize::from(p.covers(v));
            acc.points += 1;
        }
        f.update(t, v, &[])?;
    }
    acc.model = f.selected();
    Ok(acc)
}

fn parse_time(s: &str) -> Result<i64> {
    Ok(chrono::NaiveDateTime::parse_from_str(s.trim(), TIME_FORMAT)
        .with_context(|| format!("`{s}` is not a timestamp"))?
        .and_utc()
        .timestamp())
}

fn read_series(path: &Path) -> Result<(Vec<i64>, Vec<f64>)> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut times, mut values) = (Vec::new(), Vec::new());
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        times.push(parse_time(&rec[0]).with_context(|| format!("{}:{}", path.display(), i + 2))?);
        values.push(
            rec[1]
                .parse()
                .with_context(|| format!("{}:{}: value", path.display(), i + 2))?,
        );
    }
    Ok((times, values))
}

fn read_scores(path: &Path, rows: usize) -> Result<Vec<f64>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut scores = Vec::with_capacity(rows);
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let s: f64 = rec
            .get(2)
            .context("no anomaly_score column")?
            .parse()
            .with_context(|| format!("{}:{}: anomaly_score", path.display(), i + 2))?;
        ensure!(
            (0.0..=1.0).contains(&s),
            "{}:{}: score {s} outside [0, 1]",
            path.display(),
            i + 2
        );
        scores.push(s);
    }
    ensure!(
        scores.len() == rows,
        "{}: {} scores for {rows} rows",
        path.display(),
        scores.len()
    );
    Ok(scores)
}

fn print_table(r: &Report) {
    println!();
    println!(
        "NAB on {} files ({} rows, {} windows), detect took {:.2} s in all",
        r.files, r.rows, r.windows, r.detect_seconds
    );
    println!(
        "{:<22} {:>7} {:>10} {:>4} {:>5} {:>4}",
        "profile", "score", "threshold", "tp", "fp", "fn"
    );
    for p in &r.profiles {
        println!(
            "{:<22} {:>7.2} {:>10.6} {:>4} {:>5} {:>4}",
            p.profile, p.score, p.threshold, p.tp, p.fp, p.fn_
        );
    }
    println!(
        "forecast, one step ahead over {} held-out points: MASE vs seasonal-naive {}, 95% interval coverage {}",
        r.forecast_points,
        r.mase.map_or("-".into(), |m| format!("{m:.3}")),
        r.coverage_95
            .map_or("-".into(), |c| format!("{:.1}%", 100.0 * c)),
    );
    println!();
    println!(
        "{:<58} {:>7} {:>3} {:>4} {:>3} {:>6} {:>6}  model",
        "file", "raw", "tp", "fp", "fn", "MASE", "cover"
    );
    for f in &r.per_file {
        println!(
            "{:<58} {:>7.2} {:>3} {:>4} {:>3} {:>6} {:>6}  {}",
            f.file,
            f.standard_raw,
            f.tp,
            f.fp,
            f.fn_,
            f.mase.map_or("-".into(), |m| format!("{m:.3}")),
            f.coverage
                .map_or("-".into(), |c| format!("{:.1}%", 100.0 * c)),
            f.model.unwrap_or("-"),
        );
    }
    println!();
}
