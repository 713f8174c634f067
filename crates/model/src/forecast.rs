//! Forecasts of one metric series with calibrated intervals, updated online.
//!
//! A [`Forecaster`] runs every candidate model side by side: seasonal-naive over a day, naive
//! (the last value), Holt-Winters, a regression on lags, seasonal terms and exogenous system
//! metrics, and (when named) a local trend line through the newest points. Every
//! `refit_every` points it refits them on the newest `window` points; that instant is a
//! *rolling origin*: the errors of each model over the following block are
//! out-of-sample, and the model with the lowest mean absolute error (one step ahead, or over
//! horizons 1 to `select_horizon`) over the last `validation_blocks` blocks is the one used. Each model's out-of-sample errors at every
//! horizon also calibrate its intervals: the half-width at confidence `c` is the `c` quantile
//! of its recent absolute errors at that horizon, so the interval's coverage is measured, not
//! assumed from a distribution.
//!
//! Between refits an update costs O(features x horizons); refits cost one least-squares fit
//! per regression candidate and a small grid search for Holt-Winters.

pub mod holt_winters;
pub mod local_trend;
pub mod regression;
pub mod seasonal_naive;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use self::holt_winters::HoltWinters;
use self::local_trend::LocalTrend;
use self::regression::Regression;
use self::seasonal_naive::SeasonalNaive;
use crate::series::Cadence;
use crate::stats::{RollingQuantiles, quantile_sorted};
use crate::{Error, Result, Time, ensure};

/// The models a [`Forecaster`] chooses between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// The value one day earlier (naive while the history is shorter than a day).
    SeasonalNaive,
    /// The last value.
    Naive,
    /// Additive Holt-Winters with a damped trend and a daily season.
    HoltWinters,
    /// Least squares on lags, the daily lag, daily and weekly Fourier terms and the exogenous
    /// metrics of the previous point.
    Regression,
    /// A robust (Theil-Sen) line through the newest `trend_span` points, extrapolated: it
    /// follows a creep from its start. Not among the default candidates.
    LocalTrend,
}

impl ModelKind {
    /// The name used in configuration and reports.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::SeasonalNaive => "seasonal_naive",
            ModelKind::Naive => "naive",
            ModelKind::HoltWinters => "holt_winters",
            ModelKind::Regression => "regression",
            ModelKind::LocalTrend => "local_trend",
        }
    }
}

/// Parameters of a [`Forecaster`]; `check` turns them into [`ValidForecasterParams`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecasterParams {
    /// Points before the first fit. Default 288 (a day at 5 minutes).
    pub warmup: usize,
    /// Newest points a fit uses. Default 4032 (14 days at 5 minutes).
    pub window: usize,
    /// Points between refits, which is also the length of a validation block. Default 288.
    pub refit_every: usize,
    /// Blocks the choice of model looks back on. Default 3.
    pub validation_blocks: usize,
    /// Longest horizon, in points, with an interval. Default 12.
    pub max_horizon: usize,
    /// Absolute errors kept per horizon to calibrate intervals. Default 1000.
    pub calibration_window: usize,
    /// Errors a horizon needs before it gives an interval. Default 50.
    pub min_calibration: usize,
    /// Lags of the series in the regression, in points. Default `[1, 2, 3]`.
    pub lags: Vec<usize>,
    /// Daily Fourier harmonics in the regression. Default 3.
    pub daily_harmonics: usize,
    /// Weekly Fourier harmonics in the regression, used once a week of history is there.
    /// Default 2.
    pub weekly_harmonics: usize,
    /// Ridge penalty on the standardised regression features. Default 1.0.
    pub ridge: f64,
    /// The candidate models. Default seasonal-naive, naive, Holt-Winters and regression.
    pub candidates: Vec<ModelKind>,
    /// Keep every forecast after the first step within twice the recent range beyond the
    /// recent extremes. A regression whose lag coefficients are explosive grows geometrically
    /// over the horizon, and one such forecast among the calibration errors widens every later
    /// interval at that horizon: for a consumer of multi-step intervals (the migration
    /// trigger) this matters; one-step scoring does not read them. Default false.
    pub bound_horizon: bool,
    /// Horizons the choice of model is scored on: a candidate's validation error is its mean
    /// absolute error over horizons 1 to `select_horizon`. One step suits one-step scoring
    /// (the anomaly detector); a consumer of multi-step forecasts (the migration trigger)
    /// wants the model that is right over its horizon: on a slow ramp the last value is a
    /// good next point but a poor forecast twelve points out. Holt-Winters' smoothing weights
    /// are fitted over the same horizons. 1 to `max_horizon`. Default (`None`): 1.
    pub select_horizon: Option<usize>,
    /// Newest points the local trend's line goes through (3 to `window`). Default 24.
    pub trend_span: usize,
}

impl Default for ForecasterParams {
    fn default() -> Self {
        ForecasterParams {
            warmup: 288,
            window: 4032,
            refit_every: 288,
            validation_blocks: 3,
            max_horizon: 12,
            calibration_window: 1000,
            min_calibration: 50,
            lags: vec![1, 2, 3],
            daily_harmonics: 3,
            weekly_harmonics: 2,
            ridge: 1.0,
            candidates: vec![
                ModelKind::SeasonalNaive,
                ModelKind::Naive,
                ModelKind::HoltWinters,
                ModelKind::Regression,
            ],
            bound_horizon: false,
            select_horizon: None,
            trend_span: 24,
        }
    }
}

impl ForecasterParams {
    /// Validates the parameters, naming the first bad field.
    pub fn check(self) -> Result<ValidForecasterParams> {
        let p = &self;
        ensure(p.warmup >= 10, "warmup", || {
            format!("must be at least 10 points, got {}", p.warmup)
        })?;
        ensure(p.window >= p.warmup, "window", || {
            format!("must be at least warmup ({}), got {}", p.warmup, p.window)
        })?;
        ensure(p.refit_every >= 1, "refit_every", || {
            "must be at least 1".into()
        })?;
        ensure(p.validation_blocks >= 1, "validation_blocks", || {
            "must be at least 1".into()
        })?;
        ensure((1..=1000).contains(&p.max_horizon), "max_horizon", || {
            format!("must be 1 to 1000, got {}", p.max_horizon)
        })?;
        if let Some(h) = p.select_horizon {
            ensure((1..=p.max_horizon).contains(&h), "select_horizon", || {
                format!("must be 1 to max_horizon ({}), got {h}", p.max_horizon)
            })?;
        }
        ensure((3..=p.window).contains(&p.trend_span), "trend_span", || {
            format!("must be 3 to window ({}), got {}", p.window, p.trend_span)
        })?;
        ensure(p.min_calibration >= 1, "min_calibration", || {
            "must be at least 1".into()
        })?;
        ensure(
            p.calibration_window >= p.min_calibration,
            "calibration_window",
            || format!("must be at least min_calibration ({})", p.min_calibration),
        )?;
        ensure(
            p.lags.iter().all(|&l| l >= 1 && l < p.warmup / 2),
            "lags",
            || format!("each must be 1 to warmup / 2 - 1, got {:?}", p.lags),
        )?;
        ensure(p.ridge.is_finite() && p.ridge >= 0.0, "ridge", || {
            format!("must be finite and not negative, got {}", p.ridge)
        })?;
        ensure(!p.candidates.is_empty(), "candidates", || {
            "must name at least one model".into()
        })?;
        for (i, c) in p.candidates.iter().enumerate() {
            ensure(!p.candidates[..i].contains(c), "candidates", || {
                format!("{} is named twice", c.name())
            })?;
        }
        Ok(ValidForecasterParams(self))
    }
}

/// [`ForecasterParams`] that passed [`ForecasterParams::check`]; the default is the checked
/// default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidForecasterParams(ForecasterParams);

impl ValidForecasterParams {
    /// The checked parameters.
    pub fn get(&self) -> &ForecasterParams {
        &self.0
    }
}

/// A forecast at one horizon with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    /// The time forecast: the last point's time plus `horizon` steps.
    pub time: Time,
    /// Steps ahead of the last point.
    pub horizon: usize,
    /// The point forecast.
    pub mean: f64,
    /// Lower end of the interval.
    pub lower: f64,
    /// Upper end of the interval.
    pub upper: f64,
    /// The interval's nominal coverage.
    pub confidence: f64,
    /// The model that made it.
    pub model: ModelKind,
}

impl Prediction {
    /// The interval's half-width.
    pub fn half_width(&self) -> f64 {
        (self.upper - self.lower) / 2.0
    }

    /// Whether `value` lies inside the interval.
    pub fn covers(&self, value: f64) -> bool {
        self.lower <= value && value <= self.upper
    }
}

/// What [`Forecaster::predict`] has to say: a forecast, or not enough data yet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Forecast {
    /// Too few points so far; `need` is how many the forecaster needs in all.
    NotEnoughData {
        /// Points seen.
        have: usize,
        /// Points needed.
        need: usize,
    },
    /// A forecast with its interval.
    Ready(Prediction),
}

impl Forecast {
    /// The prediction, if ready.
    pub fn ready(self) -> Option<Prediction> {
        match self {
            Forecast::Ready(p) => Some(p),
            Forecast::NotEnoughData { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    SeasonalNaive(SeasonalNaive),
    HoltWinters(HoltWinters),
    Regression(Option<Regression>),
    LocalTrend(LocalTrend),
}

/// One candidate model, its issued forecasts and its out-of-sample errors.
#[derive(Debug, Clone)]
struct Candidate {
    kind: ModelKind,
    state: State,
    /// Whether the last fit succeeded (a regression needs more rows than features).
    ok: bool,
    /// Forecast vectors issued after each of the last `max_horizon` points, oldest first.
    issued: VecDeque<Vec<f64>>,
    /// Absolute one-step errors, sorted for quantiles in O(1).
    one_step: RollingQuantiles,
    /// Absolute errors at horizons 2 and up.
    longer: Vec<VecDeque<f64>>,
    block_error: f64,
    block_points: usize,
    /// Mean absolute error (over horizons 1 to `select_horizon`) of each finished validation
    /// block, newest last.
    blocks: VecDeque<f64>,
}

/// Forecasts one series online; see the module documentation.
#[derive(Debug, Clone)]
pub struct Forecaster {
    params: ValidForecasterParams,
    n_exog: usize,
    times: Vec<Time>,
    values: Vec<f64>,
    exog: Vec<f64>,
    seen: usize,
    cadence: Option<Cadence>,
    candidates: Vec<Candidate>,
    selected: Option<usize>,
    since_refit: usize,
    scratch_times: Vec<Time>,
}

impl Forecaster {
    /// An empty forecaster for a series with `n_exog` exogenous metrics per point.
    pub fn new(params: ValidForecasterParams, n_exog: usize) -> Self {
        let p = params.get();
        let candidates = p
            .candidates
            .iter()
            .map(|&kind| Candidate {
                kind,
                state: match kind {
                    ModelKind::SeasonalNaive | ModelKind::Naive => {
                        State::SeasonalNaive(SeasonalNaive::new(1))
                    }
                    ModelKind::HoltWinters => State::HoltWinters(HoltWinters::new(1)),
                    ModelKind::Regression => State::Regression(None),
                    ModelKind::LocalTrend => State::LocalTrend(LocalTrend::new(p.trend_span)),
                },
                ok: false,
                issued: VecDeque::with_capacity(p.max_horizon),
                one_step: RollingQuantiles::new(p.calibration_window),
                longer: vec![VecDeque::new(); p.max_horizon - 1],
                block_error: 0.0,
                block_points: 0,
                blocks: VecDeque::new(),
            })
            .collect();
        Forecaster {
            n_exog,
            times: Vec::new(),
            values: Vec::new(),
            exog: Vec::new(),
            seen: 0,
            cadence: None,
            candidates,
            selected: None,
            since_refit: 0,
            scratch_times: Vec::with_capacity(p.max_horizon),
            params,
        }
    }

    /// Fits on a whole history at once: the last `validation_blocks` blocks are replayed from
    /// rolling origins (fit before the block, forecast through it), which chooses the model and
    /// calibrates the intervals; the final fit uses every point. `exog` is row-major,
    /// `n_exog` values per point.
    pub fn fit(
        params: ValidForecasterParams,
        n_exog: usize,
        times: &[Time],
        values: &[f64],
        exog: &[f64],
    ) -> Result<Self> {
        let mut f = Forecaster::new(params, n_exog);
        let n = values.len();
        if times.len() != n {
            return Err(Error::Length {
                what: "times",
                expected: n,
                got: times.len(),
            });
        }
        if exog.len() != n * n_exog {
            return Err(Error::Length {
                what: "exog",
                expected: n * n_exog,
                got: exog.len(),
            });
        }
        for i in 0..n {
            f.check_point(times[i], values[i], &exog[i * n_exog..(i + 1) * n_exog])?;
            f.push(times[i], values[i], &exog[i * n_exog..(i + 1) * n_exog]);
        }
        let p = f.params.get().clone();
        if n >= p.warmup {
            let replay = (p.validation_blocks * p.refit_every).min(n - f.first_origin(p.warmup));
            f.replay(n - replay, n);
        }
        Ok(f)
    }

    /// Takes in the next point: its time (not before the last; equal times are allowed, as a
    /// clock change produces them), value and exogenous metrics. The
    /// forecasts issued before it are scored against it first, so every error is out-of-sample.
    pub fn update(&mut self, time: Time, value: f64, exog: &[f64]) -> Result<()> {
        self.check_point(time, value, exog)?;
        let window = self.params.get().window;
        if self.values.len() > 2 * window {
            let drop = self.values.len() - window;
            self.times.drain(..drop);
            self.values.drain(..drop);
            self.exog.drain(..drop * self.n_exog);
        }
        self.push(time, value, exog);
        let end = self.values.len();
        let (warmup, refit_every) = {
            let p = self.params.get();
            (p.warmup, p.refit_every)
        };
        if self.selected.is_none() {
            if end >= warmup {
                let origin = self.first_origin(end);
                self.replay(origin, end);
            }
            return Ok(());
        }
        self.observe(end);
        self.since_refit += 1;
        if self.since_refit >= refit_every {
            self.close_blocks();
            self.refit(end);
            self.since_refit = 0;
        }
        self.issue(end);
        Ok(())
    }

    /// The forecast `horizon` steps (1 to `max_horizon`) after the last point, with an interval
    /// at `confidence` (in (0, 1)), from the model validation chose.
    pub fn predict(&self, horizon: usize, confidence: f64) -> Result<Forecast> {
        match self.selected {
            None => {
                self.check_request(horizon, confidence)?;
                Ok(Forecast::NotEnoughData {
                    have: self.seen,
                    need: self.warmup(),
                })
            }
            Some(k) => self.predict_from(k, horizon, confidence),
        }
    }

    /// Like [`predict`](Self::predict), from candidate `kind` whatever validation chose (a
    /// baseline to compare with); an error when `kind` is not a candidate.
    pub fn predict_with(
        &self,
        kind: ModelKind,
        horizon: usize,
        confidence: f64,
    ) -> Result<Forecast> {
        let k = self
            .candidates
            .iter()
            .position(|c| c.kind == kind)
            .ok_or_else(|| Error::InvalidParam {
                field: "candidates",
                reason: format!("{} is not a candidate", kind.name()),
            })?;
        if self.selected.is_none() {
            return self.predict(horizon, confidence);
        }
        self.predict_from(k, horizon, confidence)
    }

    /// Points needed before every horizon gives an interval.
    pub fn warmup(&self) -> usize {
        let p = self.params.get();
        let replayed = p.warmup - self.first_origin(p.warmup);
        let errors = p.min_calibration + p.max_horizon - 1;
        p.warmup + errors.saturating_sub(replayed)
    }

    /// The model validation chose, once fitted.
    pub fn selected(&self) -> Option<ModelKind> {
        self.selected.map(|k| self.candidates[k].kind)
    }

    /// The last point taken in: its time and value.
    pub fn last(&self) -> Option<(Time, f64)> {
        Some((*self.times.last()?, *self.values.last()?))
    }

    /// Points taken in so far.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// The series' cadence, once fitted.
    pub fn cadence(&self) -> Option<Cadence> {
        self.cadence
    }

    /// The parameters.
    pub fn params(&self) -> &ForecasterParams {
        self.params.get()
    }

    /// Mean absolute error (horizons 1 to `select_horizon`) of each candidate over its recent
    /// validation blocks, in candidate order (`None` before its first block).
    pub fn validation(&self) -> Vec<(ModelKind, Option<f64>)> {
        let b = self.params.get().validation_blocks;
        self.candidates
            .iter()
            .map(|c| (c.kind, block_mean(&c.blocks, b)))
            .collect()
    }

    /// Re-baselines after a confirmed level shift: every stored point before the newest
    /// `recent` is moved by `offset`, and every model is refitted at once, so the seasonal
    /// shape learnt so far carries over to the new level instead of the shift looking
    /// anomalous until it leaves the window.
    pub fn rebaseline(&mut self, offset: f64, recent: usize) {
        if !offset.is_finite() || self.selected.is_none() {
            return;
        }
        let end = self.values.len();
        let upto = end.saturating_sub(recent);
        for v in &mut self.values[..upto] {
            *v += offset;
        }
        self.refit(end);
        self.since_refit = 0;
        for c in &mut self.candidates {
            c.issued.clear();
        }
        self.issue(end);
    }

    fn predict_from(&self, k: usize, horizon: usize, confidence: f64) -> Result<Forecast> {
        self.check_request(horizon, confidence)?;
        let c = &self.candidates[k];
        let p = self.params.get();
        let not_enough = |have_errors: usize| Forecast::NotEnoughData {
            have: self.seen,
            need: self.seen + p.min_calibration.saturating_sub(have_errors).max(1),
        };
        let (Some(issued), true) = (c.issued.back(), c.ok) else {
            return Ok(not_enough(0));
        };
        let half = if horizon == 1 {
            if c.one_step.len() < p.min_calibration {
                return Ok(not_enough(c.one_step.len()));
            }
            c.one_step.quantile(confidence)
        } else {
            let errs = &c.longer[horizon - 2];
            if errs.len() < p.min_calibration {
                return Ok(not_enough(errs.len()));
            }
            let mut v: Vec<f64> = errs.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            quantile_sorted(&v, confidence)
        };
        let half = half.unwrap_or(0.0);
        let mean = issued[horizon - 1];
        let step = self.cadence.map_or(1, Cadence::step);
        let last = self.times.last().copied().unwrap_or(0);
        Ok(Forecast::Ready(Prediction {
            time: last + step * horizon as Time,
            horizon,
            mean,
            lower: mean - half,
            upper: mean + half,
            confidence,
            model: c.kind,
        }))
    }

    fn check_request(&self, horizon: usize, confidence: f64) -> Result<()> {
        let h = self.params.get().max_horizon;
        ensure((1..=h).contains(&horizon), "horizon", || {
            format!("must be 1 to {h}, got {horizon}")
        })?;
        ensure(confidence > 0.0 && confidence < 1.0, "confidence", || {
            format!("must be strictly between 0 and 1, got {confidence}")
        })
    }

    fn check_point(&self, time: Time, value: f64, exog: &[f64]) -> Result<()> {
        let bad = |reason: String| Error::BadPoint {
            index: self.seen,
            reason,
        };
        if !value.is_finite() {
            return Err(bad(format!("value {value} is not finite")));
        }
        if let Some(&last) = self.times.last()
            && time < last
        {
            return Err(bad(format!("time {time} is before the previous {last}")));
        }
        if exog.len() != self.n_exog {
            return Err(bad(format!(
                "{} exogenous metrics, expected {}",
                exog.len(),
                self.n_exog
            )));
        }
        if let Some(x) = exog.iter().find(|x| !x.is_finite()) {
            return Err(bad(format!("exogenous metric {x} is not finite")));
        }
        Ok(())
    }

    fn push(&mut self, time: Time, value: f64, exog: &[f64]) {
        self.times.push(time);
        self.values.push(value);
        self.exog.extend_from_slice(exog);
        self.seen += 1;
    }

    /// Where the first fit's validation replay starts, for `end` points of history: a third of
    /// them, at most one block.
    fn first_origin(&self, end: usize) -> usize {
        end - (end / 3).min(self.params.get().refit_every)
    }

    /// Fits at `origin`, then streams the stored points `origin..end` through the models with
    /// the usual refits, and fits at `end`.
    fn replay(&mut self, origin: usize, end: usize) {
        let refit_every = self.params.get().refit_every;
        self.refit(origin);
        self.issue(origin);
        let mut since = 0;
        for e in origin + 1..=end {
            self.observe(e);
            since += 1;
            if since == refit_every || e == end {
                self.close_blocks();
                self.refit(e);
                since = 0;
            }
            self.issue(e);
        }
        self.since_refit = 0;
    }

    /// Scores the forecasts issued so far against the point at `end - 1`, then lets each
    /// model take it in.
    fn observe(&mut self, end: usize) {
        let y = self.values[end - 1];
        let select = self.params.0.select_horizon.unwrap_or(1);
        for c in &mut self.candidates {
            if c.ok {
                let n = c.issued.len();
                for h in 1..=n {
                    let e = (y - c.issued[n - h][h - 1]).abs();
                    if h <= select {
                        c.block_error += e;
                        c.block_points += 1;
                    }
                    if h == 1 {
                        c.one_step.push(e);
                    } else {
                        let ring = &mut c.longer[h - 2];
                        if ring.len() == self.params.0.calibration_window {
                            ring.pop_front();
                        }
                        ring.push_back(e);
                    }
                }
            }
            if let State::HoltWinters(hw) = &mut c.state
                && hw.is_fitted()
            {
                hw.update(y);
            }
        }
    }

    fn close_blocks(&mut self) {
        let keep = self.params.get().validation_blocks;
        for c in &mut self.candidates {
            if c.block_points > 0 {
                c.blocks.push_back(c.block_error / c.block_points as f64);
                if c.blocks.len() > keep {
                    c.blocks.pop_front();
                }
            }
            c.block_error = 0.0;
            c.block_points = 0;
        }
    }

    /// Refits every candidate on the newest `window` of the first `end` points and picks the
    /// one with the lowest validation error.
    fn refit(&mut self, end: usize) {
        let p = self.params.0.clone();
        let start = end.saturating_sub(p.window);
        if self.cadence.is_none() {
            self.cadence = Cadence::infer(&self.times[..end]).ok();
        }
        let Some(cadence) = self.cadence else {
            return;
        };
        let day = cadence.per_day().unwrap_or(1);
        let (times, values) = (&self.times[start..end], &self.values[start..end]);
        let exog = &self.exog[start * self.n_exog..end * self.n_exog];
        for c in &mut self.candidates {
            c.ok = match (&mut c.state, c.kind) {
                (State::SeasonalNaive(sn), kind) => {
                    *sn = SeasonalNaive::new(if kind == ModelKind::Naive { 1 } else { day });
                    true
                }
                (State::HoltWinters(hw), _) => {
                    hw.fit_for(values, day, p.select_horizon.unwrap_or(1));
                    hw.is_fitted()
                }
                // Nothing to fit: the line is drawn through the newest points at each forecast.
                (State::LocalTrend(lt), _) => lt.span() <= end,
                (State::Regression(r), _) => {
                    *r = Regression::fit(
                        times,
                        values,
                        exog,
                        cadence,
                        &p.lags,
                        p.daily_harmonics,
                        p.weekly_harmonics,
                        self.n_exog,
                        p.ridge,
                    )
                    .ok();
                    r.is_some()
                }
            };
        }
        let b = p.validation_blocks;
        let best = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.ok)
            .filter_map(|(k, c)| block_mean(&c.blocks, b).map(|e| (k, e)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, _)| k);
        self.selected = best
            .or(self.selected.filter(|&k| self.candidates[k].ok))
            .or_else(|| self.candidates.iter().position(|c| c.ok));
    }

    /// Each candidate forecasts every horizon after the point at `end - 1`.
    fn issue(&mut self, end: usize) {
        let Some(cadence) = self.cadence else {
            return;
        };
        let h = self.params.get().max_horizon;
        let last = self.times[end - 1];
        self.scratch_times.clear();
        self.scratch_times
            .extend((1..=h as Time).map(|k| last + k * cadence.step()));
        let values = &self.values[..end];
        let last_exog = &self.exog[(end - 1) * self.n_exog..end * self.n_exog];
        let bound = self
            .params
            .get()
            .bound_horizon
            .then(|| recent_bound(values, h))
            .flatten();
        for c in &mut self.candidates {
            if !c.ok {
                c.issued.clear();
                continue;
            }
            let mut out = if c.issued.len() == h {
                c.issued.pop_front().unwrap_or_default()
            } else {
                Vec::new()
            };
            out.resize(h, 0.0);
            match &mut c.state {
                State::SeasonalNaive(sn) => sn.forecast(values, &mut out),
                State::HoltWinters(hw) => hw.forecast(&mut out),
                State::Regression(Some(r)) => {
                    r.forecast(values, last_exog, &self.scratch_times, &mut out)
                }
                State::Regression(None) => {}
                State::LocalTrend(lt) => lt.forecast(values, &mut out),
            }
            if let Some((floor, ceiling)) = bound {
                for v in out.iter_mut().skip(1) {
                    *v = v.clamp(floor, ceiling);
                }
            }
            c.issued.push_back(out);
        }
    }
}

/// The band multi-step forecasts are kept in (`bound_horizon`): the extremes of the last
/// `4 h + 8` values, widened by twice their range; `None` without finite values.
fn recent_bound(values: &[f64], h: usize) -> Option<(f64, f64)> {
    let recent = &values[values.len().saturating_sub(4 * h + 8)..];
    let (lo, hi) = recent
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    (lo <= hi).then(|| {
        let span = (hi - lo).max(1e-9 * (1.0 + hi.abs()));
        (lo - 2.0 * span, hi + 2.0 * span)
    })
}

fn block_mean(blocks: &VecDeque<f64>, last: usize) -> Option<f64> {
    let n = blocks.len().min(last);
    (n > 0).then(|| blocks.iter().rev().take(n).sum::<f64>() / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ValidForecasterParams {
        ForecasterParams {
            warmup: 96,
            refit_every: 48,
            ..ForecasterParams::default()
        }
        .check()
        .unwrap()
    }

    /// A daily pattern at 5 minutes with deterministic pseudo-noise.
    fn daily(n: usize, noise: f64) -> (Vec<Time>, Vec<f64>) {
        let times: Vec<Time> = (0..n as Time).map(|i| 1_400_000_000 + i * 300).collect();
        let mut s: u64 = 42;
        let values = times
            .iter()
            .map(|&t| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let phase = (t % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
                50.0 + 20.0 * phase.sin() + noise * u
            })
            .collect();
        (times, values)
    }

    #[test]
    fn bound_horizon_keeps_an_explosive_forecast_near_the_recent_range() {
        // Growth by half a step: 12 steps ahead is 130 times the last value.
        let run = |bound_horizon: bool| {
            let p = ForecasterParams {
                warmup: 20,
                refit_every: 5,
                min_calibration: 1,
                lags: vec![1],
                daily_harmonics: 0,
                weekly_harmonics: 0,
                candidates: vec![ModelKind::Regression],
                bound_horizon,
                ..ForecasterParams::default()
            }
            .check()
            .unwrap();
            let mut f = Forecaster::new(p, 0);
            let mut last = 0.0;
            for i in 0..60 {
                last = 1.5f64.powi(i);
                f.update(i as Time * 60, last, &[]).unwrap();
            }
            (f.predict(12, 0.95).unwrap().ready().unwrap().mean, last)
        };
        let (free, last) = run(false);
        assert!(free > 100.0 * last, "{free} {last}");
        let (bounded, last) = run(true);
        assert!(bounded <= 3.0 * last + 1e-6 * last, "{bounded} {last}");
        assert!(bounded > last, "{bounded} {last}");
    }

    #[test]
    fn not_enough_data_is_a_value_until_the_stated_warmup() {
        let mut f = Forecaster::new(params(), 0);
        let need = f.warmup();
        let (times, values) = daily(need + 10, 1.0);
        for i in 0..need {
            assert!(
                matches!(f.predict(12, 0.95).unwrap(), Forecast::NotEnoughData { .. }),
                "ready after {i} points, stated {need}"
            );
            f.update(times[i], values[i], &[]).unwrap();
        }
        for h in 1..=12 {
            assert!(f.predict(h, 0.95).unwrap().ready().is_some(), "horizon {h}");
        }
    }

    #[test]
    fn params_name_the_bad_field() {
        let bad = |p: ForecasterParams| match p.check() {
            Err(Error::InvalidParam { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bad(ForecasterParams {
                warmup: 3,
                ..Default::default()
            }),
            "warmup"
        );
        assert_eq!(
            bad(ForecasterParams {
                candidates: vec![],
                ..Default::default()
            }),
            "candidates"
        );
        assert_eq!(
            bad(ForecasterParams {
                ridge: f64::NAN,
                ..Default::default()
            }),
            "ridge"
        );
        let json = r#"{"warmup": 100, "wramup": 3}"#;
        assert!(serde_json::from_str::<ForecasterParams>(json).is_err());
    }

    #[test]
    fn bad_points_are_refused_with_their_index() {
        let mut f = Forecaster::new(params(), 1);
        f.update(0, 1.0, &[0.5]).unwrap();
        assert!(matches!(
            f.update(-300, 1.0, &[0.5]),
            Err(Error::BadPoint { index: 1, .. })
        ));
        assert!(matches!(
            f.update(300, f64::NAN, &[0.5]),
            Err(Error::BadPoint { index: 1, .. })
        ));
        assert!(matches!(
            f.update(300, 1.0, &[]),
            Err(Error::BadPoint { index: 1, .. })
        ));
        assert!(f.update(300, 1.0, &[0.5]).is_ok());
    }

    #[test]
    fn validation_prefers_the_seasonal_models_on_a_daily_series() {
        let (times, values) = daily(288 * 4, 1.0);
        let f = Forecaster::fit(
            ForecasterParams::default().check().unwrap(),
            0,
            &times,
            &values,
            &[],
        )
        .unwrap();
        let chosen = f.selected().unwrap();
        assert_ne!(chosen, ModelKind::SeasonalNaive, "{:?}", f.validation());
        let errors = f.validation();
        let err = |k| errors.iter().find(|(m, _)| *m == k).unwrap().1.unwrap();
        assert!(err(chosen) <= err(ModelKind::Naive));
        assert!(err(chosen) <= err(ModelKind::SeasonalNaive));
    }

    #[test]
    fn select_horizon_scores_the_models_over_the_horizon_the_consumer_reads() {
        // A staircase ramp, like a p99 pooled over a few windows while latency creeps up:
        // flat for six points, then up by 9. The last value is right five points in six, so
        // one step ahead the naive model wins; twelve points out only a trend is near.
        let n = 240;
        let times: Vec<Time> = (0..n as Time).map(|i| 1_400_000_000 + i * 60).collect();
        let values: Vec<f64> = (0..n).map(|i| 10.0 + 9.0 * (i / 6) as f64).collect();
        let run = |select_horizon: Option<usize>| {
            let p = ForecasterParams {
                warmup: 30,
                refit_every: 12,
                validation_blocks: 2,
                daily_harmonics: 0,
                weekly_harmonics: 0,
                candidates: vec![ModelKind::Naive, ModelKind::HoltWinters],
                select_horizon,
                ..ForecasterParams::default()
            };
            Forecaster::fit(p.check().unwrap(), 0, &times, &values, &[]).unwrap()
        };
        let one_step = run(None);
        assert_eq!(
            one_step.selected(),
            Some(ModelKind::Naive),
            "{:?}",
            one_step.validation()
        );
        let over_twelve = run(Some(12));
        assert_eq!(
            over_twelve.selected(),
            Some(ModelKind::HoltWinters),
            "{:?}",
            over_twelve.validation()
        );
        let bad = ForecasterParams {
            select_horizon: Some(13),
            ..ForecasterParams::default()
        };
        let e = bad.check().unwrap_err().to_string();
        assert!(e.contains("select_horizon"), "{e}");
    }

    #[test]
    fn exogenous_metrics_drive_the_regression() {
        // the series follows the previous point's CPU: only the regression can know that
        let n = 1200;
        let times: Vec<Time> = (0..n as Time).map(|i| i * 300).collect();
        let cpu: Vec<f64> = (0..n).map(|i| ((i * 7919) % 101) as f64).collect();
        let mut values = vec![0.0];
        values.extend((1..n).map(|i| 10.0 + 2.0 * cpu[i - 1]));
        let f = Forecaster::fit(
            ForecasterParams::default().check().unwrap(),
            1,
            &times,
            &values,
            &cpu,
        )
        .unwrap();
        assert_eq!(f.selected(), Some(ModelKind::Regression));
        let p = f.predict(1, 0.95).unwrap().ready().unwrap();
        assert!((p.mean - (10.0 + 2.0 * cpu[n - 1])).abs() < 0.5, "{p:?}");
        assert!(p.half_width() < 1.0, "{p:?}");
    }

    #[test]
    fn intervals_cover_about_their_confidence() {
        let (times, values) = daily(288 * 10, 10.0);
        let mut f = Forecaster::new(ForecasterParams::default().check().unwrap(), 0);
        let (mut inside, mut total) = (0, 0);
        for (&t, &v) in times.iter().zip(&values) {
            if let Some(p) = f.predict(1, 0.9).unwrap().ready() {
                total += 1;
                inside += usize::from(p.covers(v));
            }
            f.update(t, v, &[]).unwrap();
        }
        let coverage = inside as f64 / total as f64;
        assert!(
            total > 2000 && (0.87..0.93).contains(&coverage),
            "{coverage} over {total}"
        );
    }

    /// Every series of the shared NAB data: `SHADOWPLANE_NAB_DATA`, else the crate's copy in
    /// `testdata/nab` (so the test runs from any clone).
    fn shared_series() -> Vec<(String, Vec<Time>, Vec<f64>)> {
        let dir = std::env::var_os("SHADOWPLANE_NAB_DATA")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab")
            });
        let mut out = Vec::new();
        for category in [
            "artificialNoAnomaly",
            "artificialWithAnomaly",
            "realAWSCloudwatch",
        ] {
            let folder = dir.join(category);
            let mut files: Vec<_> = std::fs::read_dir(&folder)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", folder.display()))
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for f in files {
                let mut r = csv::Reader::from_path(&f).unwrap();
                let (mut times, mut values) = (Vec::new(), Vec::new());
                for rec in r.records() {
                    let rec = rec.unwrap();
                    let t = chrono::NaiveDateTime::parse_from_str(&rec[0], "%Y-%m-%d %H:%M:%S")
                        .unwrap()
                        .and_utc()
                        .timestamp();
                    times.push(t);
                    values.push(rec[1].parse().unwrap());
                }
                out.push((f.display().to_string(), times, values));
            }
        }
        assert_eq!(
            out.len(),
            28,
            "expected the 28 shared series under {}",
            dir.display()
        );
        out
    }

    #[test]
    fn a_95_percent_interval_covers_93_to_97_percent_of_the_shared_data() {
        let (mut inside, mut total) = (0usize, 0usize);
        for (name, times, values) in shared_series() {
            let mut f = Forecaster::new(ForecasterParams::default().check().unwrap(), 0);
            let (mut file_inside, mut file_total) = (0, 0);
            for (&t, &v) in times.iter().zip(&values) {
                // predicted before the point is seen: every point is held out
                if let Some(p) = f.predict(1, 0.95).unwrap().ready() {
                    file_total += 1;
                    file_inside += usize::from(p.covers(v));
                }
                f.update(t, v, &[]).unwrap();
            }
            assert!(
                file_total > values.len() / 2,
                "{name}: only {file_total} forecasts"
            );
            inside += file_inside;
            total += file_total;
        }
        let coverage = inside as f64 / total as f64;
        assert!(
            (0.93..=0.97).contains(&coverage),
            "coverage {coverage} over {total} points"
        );
    }

    #[test]
    fn rebaseline_moves_the_history_to_the_new_level() {
        let (times, values) = daily(288 * 3, 0.5);
        let mut f = Forecaster::fit(params(), 0, &times, &values, &[]).unwrap();
        let before = f.predict(1, 0.95).unwrap().ready().unwrap().mean;
        f.rebaseline(100.0, 0);
        let after = f.predict(1, 0.95).unwrap().ready().unwrap().mean;
        assert!((after - before - 100.0).abs() < 2.0, "{before} -> {after}");
    }
}
