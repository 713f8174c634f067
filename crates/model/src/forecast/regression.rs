//! Linear regression of the next value on lagged values, the value one day earlier, daily and
//! weekly Fourier terms and the exogenous system metrics of the previous point, fitted with
//! `linfa-linear`'s least squares.
//!
//! Features are standardised and the problem is ridge-regularised by augmenting it with
//! `sqrt(ridge) * I` rows (Tikhonov's trick), so a constant series or a metric that never moves
//! gives a zero weight instead of a singular matrix; the fit itself stays linfa's.

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

use crate::series::{self, Cadence, DAY, WEEK};
use crate::{Error, Result, Time};

/// What the regression looks at; fixed per fit, chosen from the history it is fitted on.
#[derive(Debug, Clone, PartialEq)]
pub struct Design {
    /// Lags of the series, in points.
    pub lags: Vec<usize>,
    /// The daily lag in points, when the history holds three days.
    pub season_lag: Option<usize>,
    /// Daily Fourier harmonics (0 = none).
    pub daily: usize,
    /// Weekly Fourier harmonics (0 = none; used once the history holds a week).
    pub weekly: usize,
    /// Exogenous metrics per point.
    pub exog: usize,
}

impl Design {
    fn width(&self) -> usize {
        self.lags.len()
            + usize::from(self.season_lag.is_some())
            + 2 * (self.daily + self.weekly)
            + self.exog
    }

    fn max_lag(&self) -> usize {
        self.lags
            .iter()
            .copied()
            .chain(self.season_lag)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// Appends the features of the point at `time` to `out`; `lag(l)` is the value `l` points
    /// before it and `exog` the exogenous metrics of the point before it.
    fn features(&self, time: Time, lag: impl Fn(usize) -> f64, exog: &[f64], out: &mut Vec<f64>) {
        out.extend(self.lags.iter().map(|&l| lag(l)));
        if let Some(m) = self.season_lag {
            out.push(lag(m));
        }
        series::fourier(time, DAY, self.daily, out);
        series::fourier(time, WEEK, self.weekly, out);
        out.extend_from_slice(exog);
    }
}

/// A fitted regression: raw-scale weights, so a forecast is one dot product.
#[derive(Debug, Clone)]
pub struct Regression {
    design: Design,
    weights: Vec<f64>,
    intercept: f64,
    scratch: Vec<f64>,
}

impl Regression {
    /// Fits on the history: `times` and `values` oldest first, `exog` row-major with
    /// `design_for.exog` values per point. The design drops the daily lag and the weekly terms
    /// while the history is too short for them. Needs more rows than features.
    #[allow(clippy::too_many_arguments)]
    pub fn fit(
        times: &[Time],
        values: &[f64],
        exog: &[f64],
        cadence: Cadence,
        lags: &[usize],
        daily: usize,
        weekly: usize,
        n_exog: usize,
        ridge: f64,
    ) -> Result<Self> {
        let n = values.len();
        let season_lag = cadence.per_day().filter(|&m| n >= 3 * m);
        let design = Design {
            lags: lags.to_vec(),
            season_lag,
            daily: if cadence.per_day().is_some() {
                daily
            } else {
                0
            },
            weekly: if cadence.per_week().is_some_and(|w| n >= w) {
                weekly
            } else {
                0
            },
            exog: n_exog,
        };
        let p = design.width();
        let start = design.max_lag();
        if n <= start + p {
            return Err(Error::Length {
                what: "regression history",
                expected: start + p + 1,
                got: n,
            });
        }
        let rows = n - start;
        let mut x = Vec::with_capacity(rows * p);
        for t in start..n {
            let prev = &exog[(t - 1) * n_exog..t * n_exog];
            design.features(times[t], |l| values[t - l], prev, &mut x);
        }
        let y = &values[start..];
        // standardise: centre everything, scale features to unit variance
        let y_mean = y.iter().sum::<f64>() / rows as f64;
        let mut means = vec![0.0; p];
        let mut scales = vec![1.0; p];
        for j in 0..p {
            let col = (0..rows).map(|i| x[i * p + j]);
            let m = col.clone().sum::<f64>() / rows as f64;
            let var = col.map(|v| (v - m).powi(2)).sum::<f64>() / rows as f64;
            means[j] = m;
            scales[j] = if var.sqrt() > 1e-12 * (1.0 + m.abs()) {
                var.sqrt()
            } else {
                0.0
            };
        }
        let lambda = ridge.max(0.0).sqrt();
        let design_matrix = Array2::from_shape_fn((rows + p, p), |(i, j)| {
            if i < rows {
                if scales[j] > 0.0 {
                    (x[i * p + j] - means[j]) / scales[j]
                } else {
                    0.0
                }
            } else if i - rows == j {
                lambda.max(1e-6)
            } else {
                0.0
            }
        });
        let target =
            Array1::from_shape_fn(rows + p, |i| if i < rows { y[i] - y_mean } else { 0.0 });
        let fitted = LinearRegression::new()
            .with_intercept(false)
            .fit(&Dataset::new(design_matrix, target))
            .map_err(|e| Error::Fit(e.to_string()))?;
        let beta = fitted.params();
        let mut weights = vec![0.0; p];
        let mut intercept = y_mean;
        for j in 0..p {
            if scales[j] > 0.0 {
                weights[j] = beta[j] / scales[j];
                intercept -= weights[j] * means[j];
            }
        }
        if weights.iter().any(|w| !w.is_finite()) || !intercept.is_finite() {
            return Err(Error::Fit("weights are not finite".into()));
        }
        Ok(Regression {
            design,
            weights,
            intercept,
            scratch: Vec::with_capacity(p),
        })
    }

    /// The design of this fit.
    pub fn design(&self) -> &Design {
        &self.design
    }

    /// Forecasts the `out.len()` points after the end of `values`, at `times`, recursively
    /// (a lag inside the horizon uses the forecast); exogenous metrics are held at their last
    /// values `last_exog`. `values` must hold at least the design's largest lag.
    pub fn forecast(&mut self, values: &[f64], last_exog: &[f64], times: &[Time], out: &mut [f64]) {
        let n = values.len();
        for k in 0..out.len() {
            let (done, _) = out.split_at(k);
            let lag = |l: usize| {
                if l <= k {
                    done[k - l]
                } else {
                    values[n + k - l]
                }
            };
            self.scratch.clear();
            self.design
                .features(times[k], lag, last_exog, &mut self.scratch);
            let dot: f64 = self
                .scratch
                .iter()
                .zip(&self.weights)
                .map(|(a, b)| a * b)
                .sum();
            out[k] = self.intercept + dot;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_ar_process_with_an_exogenous_driver() {
        // y_t = 2 + 0.5 y_{t-1} + 3 x_{t-1}
        let n = 500;
        let times: Vec<Time> = (0..n as Time).map(|i| i * 300).collect();
        let x: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64).collect();
        let mut y = vec![4.0];
        for t in 1..n {
            y.push(2.0 + 0.5 * y[t - 1] + 3.0 * x[t - 1]);
        }
        let c = Cadence::new(300).unwrap();
        let mut r = Regression::fit(&times, &y, &x, c, &[1], 0, 0, 1, 1e-6).unwrap();
        assert_eq!(r.design().season_lag, None);
        let mut out = [0.0; 2];
        r.forecast(
            &y,
            &x[n - 1..],
            &[n as Time * 300, n as Time * 300 + 300],
            &mut out,
        );
        let one = 2.0 + 0.5 * y[n - 1] + 3.0 * x[n - 1];
        assert!((out[0] - one).abs() < 1e-6, "{out:?} {one}");
        let two = 2.0 + 0.5 * one + 3.0 * x[n - 1];
        assert!((out[1] - two).abs() < 1e-6, "{out:?} {two}");
    }

    #[test]
    fn learns_a_daily_shape_from_fourier_terms() {
        let c = Cadence::new(3600).unwrap();
        let n = 24 * 10;
        let times: Vec<Time> = (0..n as Time).map(|i| i * 3600).collect();
        let y: Vec<f64> = times
            .iter()
            .map(|&t| 50.0 + 10.0 * (t as f64 / DAY as f64 * std::f64::consts::TAU).sin())
            .collect();
        let mut r = Regression::fit(&times, &y, &[], c, &[], 2, 0, 0, 1e-6).unwrap();
        let mut out = [0.0; 6];
        let next: Vec<Time> = (0..6).map(|k| (n as Time + k) * 3600).collect();
        r.forecast(&y, &[], &next, &mut out);
        for (o, t) in out.iter().zip(&next) {
            let want = 50.0 + 10.0 * (*t as f64 / DAY as f64 * std::f64::consts::TAU).sin();
            assert!((o - want).abs() < 1e-3, "{o} {want}");
        }
    }

    #[test]
    fn a_constant_series_is_not_singular() {
        let c = Cadence::new(300).unwrap();
        let times: Vec<Time> = (0..100).map(|i| i * 300).collect();
        let mut r =
            Regression::fit(&times, &[7.0; 100], &[1.0; 100], c, &[1, 2], 3, 0, 1, 1.0).unwrap();
        let mut out = [0.0];
        r.forecast(&[7.0; 100], &[1.0], &[30_000], &mut out);
        assert!((out[0] - 7.0).abs() < 1e-9);
    }
}
