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

fn params(candidates: &[ModelKind], select_horizon: Option<usize>) -> ForecasterParams {
    ForecasterParams {
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
        select_horizon,
        ..Default::default()
    }
}

/// The p99 level at which the trigger first migrates, over `STEADY` steady points at 12 ms
/// then a creep of `slope` ms a point, with `candidates` as the demo's model configuration
/// has them. The latency swings by `periodic` of itself over six points (the scenarios' noise
/// effect). With `both`, the trigger also reads a forecaster chosen over its horizon, as the
/// control plane has it.
fn decided_at(
    candidates: &[ModelKind],
    slope: f64,
    periodic: f64,
    both: bool,
    seed: u64,
) -> Option<f64> {
    let one_step = params(candidates, None).check().unwrap();
    let mut p99 = Forecaster::new(one_step.clone(), 0);
    let mut p99_h = Forecaster::new(params(candidates, Some(HORIZON)).check().unwrap(), 0);
    let mut errors = Forecaster::new(one_step, 0);
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
        let swing = 1.0 + periodic * (i as f64 * std::f64::consts::TAU / 6.0).sin();
        // Noise of 6 ms, and one window in twenty 10 ms slow.
        let slow = if noise(i, seed + 1) > 0.45 { 10.0 } else { 0.0 };
        let v = level * swing + 6.0 * noise(i, seed) + slow;
        p99.update(i as i64, v, &[]).unwrap();
        p99_h.update(i as i64, v, &[]).unwrap();
        errors.update(i as i64, 0.001, &[]).unwrap();
        let group = GroupForecasts {
            p99_ms: &p99,
            p99_over_horizon: both.then_some(&p99_h),
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
        let hw = decided_at(&[HoltWinters], 1.3, 0.0, false, seed).expect("never migrated");
        let with_trend =
            decided_at(&[HoltWinters, LocalTrend], 1.3, 0.0, false, seed).expect("never migrated");
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
        for periodic in [0.0, 0.1] {
            for both in [false, true] {
                let d = decided_at(&[HoltWinters, LocalTrend], 0.0, periodic, both, seed);
                assert_eq!(d, None, "seed {seed}, swing {periodic}, both {both}");
            }
        }
    }
}

#[test]
fn the_forecaster_chosen_over_the_horizon_sees_a_swinging_creep_sooner() {
    use ModelKind::{HoltWinters, LocalTrend};
    // Under a 10% swing the one-step choice keeps Holt-Winters, which tracks the swing, and
    // its flat trend; over 30 windows the local trend scores better and is chosen.
    let (mut sooner, mut later) = (0, 0);
    for seed in 0..6 {
        let one = decided_at(&[HoltWinters, LocalTrend], 0.8, 0.1, false, seed).expect("one");
        let both = decided_at(&[HoltWinters, LocalTrend], 0.8, 0.1, true, seed).expect("both");
        eprintln!(
            "seed {seed}: one-step choice at {one:.1} ms, with the horizon's at {both:.1} ms"
        );
        sooner += usize::from(both < one);
        later += usize::from(both > one);
    }
    assert_eq!(later, 0, "the graver of two risks is never later");
    assert!(sooner >= 1, "never sooner");
}
