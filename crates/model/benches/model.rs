//! Criterion benches of the model: one point updated and scored, a full fit on 14 days at
//! 5 minutes, and the whole shared NAB data set scored. `cargo xtask bench model` runs them
//! and writes the figures to target/bench/model.json.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use shadowplane_model::{Detector, DetectorParams, Forecaster, ForecasterParams};

/// 14 days at 5 minutes.
const POINTS: usize = 4032;

/// A daily and weekly pattern with deterministic noise, like a busy service's latency.
fn series(n: usize) -> (Vec<i64>, Vec<f64>) {
    let times: Vec<i64> = (0..n as i64).map(|i| 1_400_000_000 + i * 300).collect();
    let mut s: u64 = 7;
    let values = times
        .iter()
        .map(|&t| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let noise = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let day = (t % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
            let week = (t % 604_800) as f64 / 604_800.0 * std::f64::consts::TAU;
            100.0 + 30.0 * day.sin() + 10.0 * week.cos() + 8.0 * noise
        })
        .collect();
    (times, values)
}

fn update_and_score(c: &mut Criterion) {
    let (times, values) = series(POINTS + 288);
    // default parameters; the first has its refits moved out of reach, so that every measured
    // point is an ordinary update (the per-point work is the same)
    let between = DetectorParams {
        forecaster: ForecasterParams {
            refit_every: usize::MAX / 2,
            ..ForecasterParams::default()
        },
        ..DetectorParams::default()
    };
    for (name, params) in [
        ("update_and_score", between),
        ("update_and_score_amortized", DetectorParams::default()),
    ] {
        let mut d = Detector::new(params.check().unwrap(), 0);
        for (&t, &v) in times.iter().zip(&values) {
            d.update(t, v, &[]).unwrap();
        }
        let mut t = *times.last().unwrap();
        let mut k = 0;
        c.bench_function(name, |b| {
            b.iter(|| {
                t += 300;
                k = (k + 1) % values.len();
                black_box(d.update(t, values[k], &[]).unwrap())
            })
        });
    }
}

fn full_fit(c: &mut Criterion) {
    let (times, values) = series(POINTS);
    let params = ForecasterParams::default().check().unwrap();
    c.bench_function("full_fit_4032", |b| {
        b.iter(|| black_box(Forecaster::fit(params.clone(), 0, &times, &values, &[]).unwrap()))
    });
}

/// The NAB series (`SHADOWPLANE_NAB_DATA`, else the crate's copy in `testdata/nab`), parsed up
/// front.
fn nab_series() -> Vec<(Vec<i64>, Vec<f64>)> {
    let dir = std::env::var_os("SHADOWPLANE_NAB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/nab"));
    let mut out = Vec::new();
    for category in [
        "artificialNoAnomaly",
        "artificialWithAnomaly",
        "realAWSCloudwatch",
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(category))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.join(category).display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .collect();
        files.sort();
        for f in files {
            let mut r = csv::Reader::from_path(&f).unwrap();
            let (mut t, mut v) = (Vec::new(), Vec::new());
            for rec in r.records() {
                let rec = rec.unwrap();
                let time = chrono::NaiveDateTime::parse_from_str(&rec[0], "%Y-%m-%d %H:%M:%S")
                    .unwrap()
                    .and_utc()
                    .timestamp();
                t.push(time);
                v.push(rec[1].parse().unwrap());
            }
            out.push((t, v));
        }
    }
    assert!(!out.is_empty(), "no NAB series under {}", dir.display());
    out
}

fn score_shared_data(c: &mut Criterion) {
    let data = nab_series();
    let params = DetectorParams::default().check().unwrap();
    let mut group = c.benchmark_group("nab");
    group.sample_size(10);
    group.bench_function("score_all", |b| {
        b.iter(|| {
            let mut total = 0.0;
            for (times, values) in &data {
                let mut d = Detector::new(params.clone(), 0);
                for (&t, &v) in times.iter().zip(values) {
                    total += d.update(t, v, &[]).unwrap().score;
                }
            }
            black_box(total)
        })
    });
    group.finish();
}

criterion_group!(benches, update_and_score, full_fit, score_shared_data);
criterion_main!(benches);
