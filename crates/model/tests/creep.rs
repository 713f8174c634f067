//! The trigger on a simulated creep: the p99 of a service whose latency starts to rise, as the
//! control plane feeds it (a point a window, with noise and the odd slow window), against the
//! same service holding steady.

use shadowplane_model::trigger::{Action, GroupForecasts, Policy, Trigger};
use shadowplane_model::{Forecaster, ForecasterParams, ModelKind};

/// Deterministic noise in [-0.5, 0.5).
fn noise(i: usize, seed: u64) -> f64 {
    let x = (i as u64)
        .wrapping_add(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(6_364_136_223_846_793_005)
        .rotate_left(17)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5
}

const HORIZON: usize = 30;
const SLO: f64 = 60.0;
const STEADY: usize = 120;

/// The p99 level at which the trigger first migrates, over `STEADY` steady points then a
/// creep of `slope` ms a point, with `candidates` as the demo's model configuration has them.
fn decided_at(candidates: &[ModelKind], slope: f64, seed: u64) -> Option<f64> {
    let params = ForecasterParams {
        warmup: 20,
        window: 600,
        refit_every: 5,
        validation_blocks: 1,
        max_horizon: HORIZON,
        min_calibration: 10,
        calibration_window: 200,
        daily_harmonics: 0,
        weekly_harmonics: 0,
        bound_horizon: true,
        candidates: candidates.to_vec(),
        ..Default::default()
    }
    .check()
    .unwrap();
    let mut p99 = Forecaster::new(params.clone(), 0);
    let mut errors = Forecaster::new(params, 0);
    let policy = Policy {
        slo_p99_ms: SLO,
        slo_error_rate: 0.05,
        horizon: HORIZON,
        confidence: 0.8,
        enter: 0.9,
        min_dwell_secs: 0,
        ..Policy::default()
    };
    let mut trigger = Trigger::new(policy.check().unwrap());
    for i in 0..STEADY + 300 {
        let level = 12.0 + slope * i.saturating_sub(STEADY) as f64;
        // Noise of 6 ms, and one window in twenty 10 ms slow.
        let slow = if noise(i, seed + 1) > 0.45 { 10.0 } else { 0.0 };
        p99.update(i as i64, level + 6.0 * noise(i, seed) + slow, &[])
            .unwrap();
        errors.update(i as i64, 0.001, &[]).unwrap();
        let group = GroupForecasts {
            p99_ms: &p99,
            error_rate: &errors,
            cost_per_hour: None,
            error_counts: None,
            p99_tail: None,
        };
        if trigger.check(i as i64, &group).unwrap().action == Action::Migrate {
            return Some(level);
        }
    }
    None
}

#[test]
fn a_local_trend_lets_the_trigger_see_a_creep_holt_winters_alone_does_not() {
    use ModelKind::{HoltWinters, LocalTrend};
    for seed in 0..4 {
        // 1.3 ms a window reaches the 54 ms entry level 32 windows in: a 30-window horizon
        // can see it coming from about 15 ms in.
        let hw = decided_at(&[HoltWinters], 1.3, seed).expect("never migrated");
        let with_trend = decided_at(&[HoltWinters, LocalTrend], 1.3, seed).expect("never migrated");
        eprintln!(
            "seed {seed}: Holt-Winters alone decided at {hw:.1} ms, with the trend at {with_trend:.1} ms"
        );
        assert!(with_trend < 45.0, "seed {seed}: decided at {with_trend} ms");
        assert!(
            with_trend < hw,
            "seed {seed}: {with_trend} ms with the trend, {hw} without"
        );
    }
}

#[test]
fn a_steady_service_never_migrates_with_a_local_trend_among_the_candidates() {
    use ModelKind::{HoltWinters, LocalTrend};
    for seed in 0..4 {
        assert_eq!(
            decided_at(&[HoltWinters, LocalTrend], 0.0, seed),
            None,
            "seed {seed}"
        );
    }
}
