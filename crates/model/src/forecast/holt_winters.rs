//! Additive Holt-Winters with a damped trend: exponential smoothing of level, trend and one
//! season. Written by hand because no maintained Rust crate offers it online (augurs-ets fits
//! in batch only and brings its own optimiser); its smoothing weights are chosen from a small
//! grid by one-step squared error over the fit window.

/// Smoothing weights tried at fit time: (level, trend, season).
const ALPHAS: [f64; 4] = [0.05, 0.2, 0.5, 0.8];
const BETAS: [f64; 2] = [0.0, 0.05];
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
        if values.len() < 2 {
            return;
        }
        self.period = if period >= 2 && values.len() >= 2 * period {
            period
        } else {
            1
        };
        let mut best: Option<(f64, Weights)> = None;
        for &alpha in &ALPHAS {
            for &beta in &BETAS {
                for &gamma in &GAMMAS {
                    let w = Weights { alpha, beta, gamma };
                    let sse = self.run(values, w);
                    if best.is_none_or(|(b, _)| sse < b) {
                        best = Some((sse, w));
                    }
                }
            }
        }
        if let Some((_, w)) = best {
            self.run(values, w);
            self.weights = w;
            self.fitted = true;
        }
    }

    /// Restarts from `values` with weights `w`, returning the one-step squared error.
    fn run(&mut self, values: &[f64], w: Weights) -> f64 {
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
        for &y in &values[init..] {
            let e = y - self.one_step();
            sse += e * e;
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
