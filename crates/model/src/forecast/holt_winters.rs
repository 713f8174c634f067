//! Additive Holt-Winters with a damped trend: exponential smoothing of level, trend and one
//! season. Written by hand because no maintained Rust crate offers it online (augurs-ets fits
//! in batch only and brings its own optimiser); its smoothing weights are chosen from a small
//! grid by squared error over the fit window: one step ahead, or over every horizon up to the
//! one its forecasts are read at ([`HoltWinters::fit_for`]), where a trend learnt too slowly
//! costs what it really costs.

/// Smoothing weights tried at fit time: (level, trend, season).
const ALPHAS: [f64; 4] = [0.05, 0.2, 0.5, 0.8];
const BETAS: [f64; 2] = [0.0, 0.05];
/// Trend weights a fit for multi-step use also tries: a creep that began a few dozen points
/// ago is a small part of the one-step error and most of the error twelve points out.
const FAST_BETAS: [f64; 1] = [0.2];
const GAMMAS: [f64; 3] = [0.05, 0.2, 0.5];
/// Trend damping: a trend fades over a few hundred points instead of running away.
const PHI: f64 = 0.98;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Weights {
    alpha: f64,
    beta: f64,
    gamma: f64,
}

/// The model's state after the last point it saw.
#[derive(Debug, Clone)]
pub struct HoltWinters {
    /// Season in points; 1 means no season (Holt's damped linear trend).
    period: usize,
    weights: Weights,
    level: f64,
    trend: f64,
    season: Vec<f64>,
    /// Index, within the season, of the next point.
    pos: usize,
    fitted: bool,
}

impl HoltWinters {
    /// An unfitted model with a season of `period` points (1 for none).
    pub fn new(period: usize) -> Self {
        let period = period.max(1);
        HoltWinters {
            period,
            weights: Weights {
                alpha: 0.5,
                beta: 0.0,
                gamma: 0.2,
            },
            level: 0.0,
            trend: 0.0,
            season: vec![0.0; period],
            pos: 0,
            fitted: false,
        }
    }

    /// The season in use, in points (1 = none); a season needs two of them in the fit window.
    pub fn period(&self) -> usize {
        self.period
    }

    /// Fits on `values` (oldest first) and leaves the state at its end. Does nothing on fewer
    /// than two points.
    pub fn fit(&mut self, values: &[f64], period: usize) {
        self.fit_for(values, period, 1);
    }

    /// Like [`fit`](Self::fit), choosing the weights by the squared error of the forecasts at
    /// every horizon from 1 to `horizon` (1 is [`fit`](Self::fit)).
    pub fn fit_for(&mut self, values: &[f64], period: usize, horizon: usize) {
        if values.len() < 2 {
            return;
        }
        let horizon = horizon.max(1);
        self.period = if period >= 2 && values.len() >= 2 * period {
            period
        } else {
            1
        };
        let fast: &[f64] = if horizon > 1 { &FAST_BETAS } else { &[] };
        let mut best: Option<(f64, Weights)> = None;
        let mut ahead = vec![0.0; horizon];
        for &alpha in &ALPHAS {
            for &beta in BETAS.iter().chain(fast) {
                for &gamma in &GAMMAS {
                    let w = Weights { alpha, beta, gamma };
                    let sse = self.run(values, w, &mut ahead);
                    if best.is_none_or(|(b, _)| sse < b) {
                        best = Some((sse, w));
                    }
                }
            }
        }
        if let Some((_, w)) = best {
            self.run(values, w, &mut [0.0]);
            self.weights = w;
            self.fitted = true;
        }
    }

    /// Restarts from `values` with weights `w`, returning the squared error of the forecasts
    /// at horizons 1 to `ahead.len()` (scratch space) against the values that followed.
    fn run(&mut self, values: &[f64], w: Weights, ahead: &mut [f64]) -> f64 {
        let m = self.period;
        let init = if m > 1 { m } else { 1 };
        let level = values[..init].iter().sum::<f64>() / init as f64;
        self.level = level;
        self.trend = 0.0;
        self.season = if m > 1 {
            values[..m].iter().map(|v| v - level).collect()
        } else {
            vec![0.0]
        };
        self.pos = init % m;
        self.weights = w;
        let mut sse = 0.0;
        for (i, &y) in values.iter().enumerate().skip(init) {
            if ahead.len() == 1 {
                let e = y - self.one_step();
                sse += e * e;
            } else {
                self.forecast(ahead);
                for (f, actual) in ahead.iter().zip(&values[i..]) {
                    let e = actual - f;
                    sse += e * e;
                }
            }
            self.update(y);
        }
        sse
    }

    fn one_step(&self) -> f64 {
        self.level + PHI * self.trend + self.season[self.pos % self.season.len()]
    }

    /// Takes in the next point.
    pub fn update(&mut self, y: f64) {
        let Weights { alpha, beta, gamma } = self.weights;
        let s_len = self.season.len();
        let s = self.season[self.pos % s_len];
        let prev = self.level;
        self.level = alpha * (y - s) + (1.0 - alpha) * (prev + PHI * self.trend);
        self.trend = beta * (self.level - prev) + (1.0 - beta) * PHI * self.trend;
        if self.period > 1 {
            self.season[self.pos % s_len] = gamma * (y - self.level) + (1.0 - gamma) * s;
        }
        self.pos = (self.pos + 1) % self.period;
    }

    /// Forecasts the next `out.len()` points.
    pub fn forecast(&self, out: &mut [f64]) {
        let mut damp = 0.0;
        let mut phi_h = 1.0;
        for (k, o) in out.iter_mut().enumerate() {
            phi_h *= PHI;
            damp += phi_h;
            let s = if self.period > 1 {
                self.season[(self.pos + k) % self.period]
            } else {
                0.0
            };
            *o = self.level + damp * self.trend + s;
        }
    }

    /// Whether [`fit`](Self::fit) has run.
    pub fn is_fitted(&self) -> bool {
        self.fitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fit_for_a_long_horizon_follows_a_young_creep() {
        // 560 noisy flat points, then 40 of a creep of 1 a point: 30 points out the series
        // will be about 30 above its last value.
        let mut s: u64 = 7;
        let v: Vec<f64> = (0..600)
            .map(|i| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                50.0 + 4.0 * u + (i as f64 - 560.0).max(0.0)
            })
            .collect();
        let last = v[599];
        let at_30 = |horizon: usize| {
            let mut hw = HoltWinters::new(1);
            hw.fit_for(&v, 1, horizon);
            let mut out = [0.0; 30];
            hw.forecast(&mut out);
            out[29] - last
        };
        let (one_step, thirty) = (at_30(1), at_30(30));
        assert!(
            thirty > one_step + 5.0,
            "rises: one-step fit {one_step}, 30-step fit {thirty}"
        );
        assert!(thirty > 15.0, "30-step fit forecasts a rise of {thirty}");
    }

    #[test]
    fn learns_a_season_and_a_level() {
        let pattern = [0.0, 5.0, 10.0, 5.0];
        let v: Vec<f64> = (0..200).map(|i| 100.0 + pattern[i % 4]).collect();
        let mut hw = HoltWinters::new(4);
        hw.fit(&v, 4);
        assert_eq!(hw.period(), 4);
        let mut out = [0.0; 4];
        hw.forecast(&mut out);
        for (k, o) in out.iter().enumerate() {
            assert!(
                (o - (100.0 + pattern[(200 + k) % 4])).abs() < 0.5,
                "{out:?}"
            );
        }
    }

    #[test]
    fn follows_a_shift_online() {
        let mut hw = HoltWinters::new(1);
        hw.fit(&[10.0; 50], 1);
        assert_eq!(hw.period(), 1);
        for _ in 0..100 {
            hw.update(20.0);
        }
        let mut out = [0.0];
        hw.forecast(&mut out);
        assert!((out[0] - 20.0).abs() < 0.5, "{out:?}");
    }

    #[test]
    fn too_short_for_a_season_means_none() {
        let mut hw = HoltWinters::new(10);
        hw.fit(&[1.0, 2.0, 3.0, 4.0, 5.0], 10);
        assert_eq!(hw.period(), 1);
        assert!(hw.is_fitted());
    }
}
