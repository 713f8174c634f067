//! Anomaly detection: the deviation of each point from its forecast in units of the predicted
//! spread, turned into a score in [0, 1], with persistence and re-baselining.
//!
//! The spread is the forecaster's calibrated one-step interval at `confidence` divided by the
//! normal multiplier of that confidence, so "3 sigma" means three times the spread the model's
//! own recent out-of-sample errors show, not a distribution assumed for them.
//!
//! The score ranks points across series: it is the tail probability of the deviation among the
//! series' own past deviations (an exponential tail fitted beyond the 95th percentile), so a
//! spiky series is not scored like a smooth one. A sustained deviation is scored the same way
//! on its mean over `sustained` points and over `sustained_long` points (a denser run of spikes
//! or a new regime, which no single point shows). Within an episode (`episode` points) only a
//! deviation rarer than the episode's rarest so far scores high: the first alarm says it, the
//! rest of the same event does not repeat it. A seasonal memory does the same across days: a
//! point is scored relative to the rarest point near the same time of day on each of the last
//! `seasonal_days` days, so a spike that comes back every day (and the hole a day after an
//! anomaly, where the daily lags expected it again) is no news.
//!
//! Until the forecaster's deviations can be scored, a naive stand-in (the previous value, with
//! a robust spread) scores the points, so a short series is not blind for its first day.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::forecast::{Forecaster, ForecasterParams, ValidForecasterParams};
use crate::stats::{RollingQuantiles, normal_multiplier};
use crate::{Result, Time, ensure};

/// Parameters of a [`Detector`]; `check` turns them into [`ValidDetectorParams`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorParams {
    /// The forecaster's parameters. Default [`ForecasterParams::default`].
    pub forecaster: ForecasterParams,
    /// Deviation, in units of the predicted spread, at which a point is anomalous; it scores
    /// 0.5 there. Default 3.
    pub threshold: f64,
    /// Confidence of the one-step interval the spread is read from. Default 0.95.
    pub confidence: f64,
    /// Severity counts anomalous points among the last `persistence_window`. Default 6.
    pub persistence_window: usize,
    /// Anomalous points among the last `persistence_window`, all on the same side of the
    /// forecast, that confirm a level shift and re-baseline the model. Default 5.
    pub level_shift_points: usize,
    /// Past deviations the score's tail probability is estimated from. Default 4032.
    pub score_window: usize,
    /// Deviations needed before the score is above 0. Default 100.
    pub score_min: usize,
    /// Fraction of past deviations that form the fitted tail. Default 0.05.
    pub score_tail: f64,
    /// Points an episode lasts: within it, only a deviation rarer than the episode's rarest
    /// so far scores high. Default 96 (8 hours at 5 minutes).
    pub episode: usize,
    /// Exponent of the episode's rarest probability in that comparison. Default 1.
    pub episode_weight: f64,
    /// The tail probability that scores 0.5. Default 1e-4.
    pub score_half: f64,
    /// Points whose mean deviation is scored too, for shifts too small for one point. 0 = off.
    /// Default 20.
    pub sustained: usize,
    /// A second, longer window whose mean deviation is scored the same way, for a rise in the
    /// rate of spikes or a change of regime that 20 points cannot tell from noise. 0 = off.
    /// Default 144 (half a day at 5 minutes).
    pub sustained_long: usize,
    /// Deviations are clipped at this before the means, so one huge spike does not make a
    /// sustained deviation by itself. Default 10.
    pub sustained_clip: f64,
    /// Days the seasonal memory looks back on: a point is scored relative to the rarest
    /// point near the same time of day when each of those days had one (the mildest of the
    /// days' rarest), so a spike that recurs daily, and the echo of yesterday's anomaly
    /// through the daily lags, is no news. 0 = off. Default 2.
    pub seasonal_days: usize,
    /// Points either side of the same time of day the seasonal memory looks at, for a
    /// recurring spike that comes a little early or late. Default 4.
    pub seasonal_slack: usize,
    /// One-step errors the naive stand-in needs before it scores. Until the forecaster's
    /// deviations can be scored (`score_min` of them after its warm-up), the previous value
    /// stands in as the forecast, with a spread from the median of those errors, so a short
    /// series is scored from early on. 0 = off. Default 30.
    pub early_min: usize,
}

impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams {
            forecaster: ForecasterParams::default(),
            threshold: 3.0,
            confidence: 0.95,
            persistence_window: 6,
            level_shift_points: 5,
            score_window: 4032,
            score_min: 100,
            score_tail: 0.05,
            episode: 96,
            episode_weight: 1.0,
            score_half: 1e-4,
            sustained: 20,
            sustained_long: 144,
            sustained_clip: 10.0,
            seasonal_days: 2,
            seasonal_slack: 4,
            early_min: 30,
        }
    }
}

impl DetectorParams {
    /// Validates the parameters, naming the first bad field.
    pub fn check(self) -> Result<ValidDetectorParams> {
        let forecaster = self.forecaster.clone().check()?;
        ensure(
            self.threshold.is_finite() && self.threshold > 0.0,
            "threshold",
            || format!("must be positive, got {}", self.threshold),
        )?;
        ensure(
            self.confidence > 0.5 && self.confidence < 1.0,
            "confidence",
            || format!("must be between 0.5 and 1, got {}", self.confidence),
        )?;
        ensure(
            self.score_half > 0.0 && self.score_half < 1.0,
            "score_half",
            || format!("must be strictly between 0 and 1, got {}", self.score_half),
        )?;
        ensure(self.persistence_window >= 1, "persistence_window", || {
            "must be at least 1".into()
        })?;
        ensure(
            (1..=self.persistence_window).contains(&self.level_shift_points),
            "level_shift_points",
            || {
                format!(
                    "must be 1 to persistence_window ({})",
                    self.persistence_window
                )
            },
        )?;
        Ok(ValidDetectorParams {
            params: self,
            forecaster,
        })
    }
}

/// [`DetectorParams`] that passed [`DetectorParams::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidDetectorParams {
    params: DetectorParams,
    forecaster: ValidForecasterParams,
}

impl ValidDetectorParams {
    /// The checked parameters.
    pub fn get(&self) -> &DetectorParams {
        &self.params
    }
}

/// What the detector says about one point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// The point's time.
    pub time: Time,
    /// The point's value.
    pub value: f64,
    /// The one-step forecast for it; `None` during the warm-up.
    pub expected: Option<f64>,
    /// The predicted spread (one sigma); `None` during the warm-up.
    pub spread: Option<f64>,
    /// `(value - expected) / spread`; 0 during the warm-up.
    pub deviation: f64,
    /// The anomaly score in [0, 1): how improbable the deviation is against this series' own
    /// past deviations (point by point and over the last `sustained` points), relative to the
    /// most improbable point of the current episode; 0.5 at probability `score_half`.
    pub score: f64,
    /// Whether the deviation reached the threshold.
    pub anomalous: bool,
    /// Anomalous points among the last `persistence_window`, as a fraction (0 to 1).
    pub severity: f64,
    /// Whether this point confirmed a level shift and the model re-baselined.
    pub rebaselined: bool,
}

/// Scores a series point by point; see the module documentation.
#[derive(Debug, Clone)]
pub struct Detector {
    params: DetectorParams,
    forecaster: Forecaster,
    multiplier: f64,
    /// Signed deviations of the recent anomalous points (0 for normal ones), newest last.
    recent: VecDeque<f64>,
    /// Residuals of the recent points, newest last, for the re-baselining offset.
    residuals: VecDeque<f64>,
    /// Past absolute deviations, for the score's tail probability.
    history: RollingQuantiles,
    /// Log tail probabilities of the last `episode` points, newest last.
    episode: VecDeque<f64>,
    /// The sustained deviations over `sustained` and `sustained_long` points.
    sustained: Vec<Sustained>,
    /// Log tail probabilities of the last `seasonal_days` days (and the slack), newest last.
    seasonal: VecDeque<f64>,
    /// The stand-in forecast before the forecaster's warm-up; dropped once it is ready.
    early: Option<Early>,
}

impl Detector {
    /// A detector for a series with `n_exog` exogenous metrics per point.
    pub fn new(params: ValidDetectorParams, n_exog: usize) -> Self {
        let multiplier = normal_multiplier(params.params.confidence);
        Detector {
            forecaster: Forecaster::new(params.forecaster, n_exog),
            multiplier,
            recent: VecDeque::with_capacity(params.params.persistence_window),
            residuals: VecDeque::with_capacity(params.params.persistence_window),
            history: RollingQuantiles::new(params.params.score_window),
            episode: VecDeque::with_capacity(params.params.episode),
            sustained: [params.params.sustained, params.params.sustained_long]
                .into_iter()
                .filter(|&n| n > 0)
                .map(|n| Sustained::new(n, params.params.score_window))
                .collect(),
            seasonal: VecDeque::new(),
            early: (params.params.early_min > 0).then(|| Early::new(params.params.early_min)),
            params: params.params,
        }
    }

    /// Points before the first score above 0: those the stand-in needs (`early_min` errors
    /// after the first point), else the forecaster's warm-up.
    pub fn warmup(&self) -> usize {
        let forecaster = self.forecaster.warmup();
        if self.params.early_min > 0 {
            (self.params.early_min + 1).min(forecaster)
        } else {
            forecaster
        }
    }

    /// The forecaster inside.
    pub fn forecaster(&self) -> &Forecaster {
        &self.forecaster
    }

    /// Scores the next point against the forecast made before it, then takes it in.
    pub fn update(&mut self, time: Time, value: f64, exog: &[f64]) -> Result<Verdict> {
        let forecast = self.forecaster.predict(1, self.params.confidence)?;
        self.forecaster.update(time, value, exog)?;
        let mut verdict = Verdict {
            time,
            value,
            expected: None,
            spread: None,
            deviation: 0.0,
            score: 0.0,
            anomalous: false,
            severity: 0.0,
            rebaselined: false,
        };
        let warm = self.history.len() >= self.params.score_min;
        // until the forecaster's deviations can be scored, the previous value stands in
        let stand_in = match &mut self.early {
            Some(e) if !warm => e.next(value),
            _ => None,
        };
        if warm {
            self.early = None;
        }
        let main = forecast
            .ready()
            .map(|p| (p.mean, self.spread(p.mean, p.half_width())));
        let Some((mean, spread)) = stand_in.or(main) else {
            return Ok(verdict);
        };
        let mut ln_p = 0.0;
        let mut memory = None;
        if let Some((m, s)) = main {
            let z = (value - m) / s;
            // before `score_min` deviations the point is not scored, but the seasonal memory
            // still learns how rare it looked, so tomorrow's repeat of it is no news
            let point = self.history.ln_exceedance(z.abs(), self.params.score_tail);
            if warm {
                ln_p = point;
            } else {
                memory = Some(point);
            }
            self.history.push(z.abs());
            let clipped = z.abs().min(self.params.sustained_clip);
            for s in &mut self.sustained {
                if let Some(ln_s) = s.push(clipped, self.params.score_min, self.params.score_tail) {
                    ln_p = ln_p.min(ln_s);
                }
            }
        }
        let z = (value - mean) / spread;
        if stand_in.is_some() {
            // the stand-in has no history of its own deviations to rank them against: the
            // normal tail, to leading order, of a deviation in robust sigmas
            ln_p = -z * z / 2.0;
        }
        verdict.expected = Some(mean);
        verdict.spread = Some(spread);
        verdict.deviation = z;
        verdict.anomalous = z.abs() >= self.params.threshold;
        // an anomaly already reported in the recent past makes a similar one no news: the
        // probability is taken relative to the most extreme point of the episode
        let recent_min =
            self.episode.iter().copied().fold(0.0, f64::min) * self.params.episode_weight;
        let seasonal_min = self.seasonal_min(memory.unwrap_or(ln_p));
        if self.episode.len() == self.params.episode {
            self.episode.pop_front();
        }
        if self.params.episode > 0 {
            self.episode.push_back(ln_p);
        }
        let surprise = -(ln_p - recent_min.min(seasonal_min)).min(0.0);
        // monotone in the probability, 0.5 at `score_half`, and never saturating at 1, so
        // the most extreme points keep their order
        let half = -self.params.score_half.ln();
        verdict.score = surprise / (surprise + half);
        // persistence and re-baselining follow the forecaster only
        if let Some((m, s)) = main {
            self.persist(value - m, (value - m) / s, &mut verdict);
        }
        Ok(verdict)
    }
}

impl Detector {
    /// Counts the point towards persistence and re-baselines the forecaster when the recent
    /// anomalous points confirm a level shift.
    fn persist(&mut self, residual: f64, z: f64, verdict: &mut Verdict) {
        let w = self.params.persistence_window;
        if self.recent.len() == w {
            self.recent.pop_front();
            self.residuals.pop_front();
        }
        let anomalous = z.abs() >= self.params.threshold;
        self.recent.push_back(if anomalous { z } else { 0.0 });
        self.residuals.push_back(residual);
        let up = self.recent.iter().filter(|&&d| d > 0.0).count();
        let down = self.recent.iter().filter(|&&d| d < 0.0).count();
        verdict.severity = (up + down) as f64 / w as f64;
        if up.max(down) >= self.params.level_shift_points {
            let sign = if up >= down { 1.0 } else { -1.0 };
            let shifted: Vec<f64> = self
                .recent
                .iter()
                .zip(&self.residuals)
                .filter(|(d, _)| **d * sign > 0.0)
                .map(|(_, r)| *r)
                .collect();
            let offset = shifted.iter().sum::<f64>() / shifted.len() as f64;
            self.forecaster.rebaseline(offset, self.recent.len());
            self.recent.clear();
            self.residuals.clear();
            verdict.rebaselined = true;
        }
    }

    /// One sigma from an interval's half-width, floored so a perfect fit does not divide by 0.
    fn spread(&self, mean: f64, half: f64) -> f64 {
        (half / self.multiplier).max(1e-9 * (1.0 + mean.abs()))
    }

    /// The seasonal memory's reference for a point: on each of the last `seasonal_days` days
    /// held, the rarest log probability within `seasonal_slack` points of this time of day,
    /// and of those the mildest, so only what came back every day counts (0 before a day is
    /// held). Then takes `ln_p` in.
    fn seasonal_min(&mut self, ln_p: f64) -> f64 {
        let (days, slack) = (self.params.seasonal_days, self.params.seasonal_slack);
        let Some(day) = self.forecaster.cadence().and_then(|c| c.per_day()) else {
            return 0.0;
        };
        if days == 0 {
            return 0.0;
        }
        let n = self.seasonal.len();
        let mut reference: Option<f64> = None;
        for lag in (1..=days).map(|d| d * day).take_while(|&lag| lag <= n) {
            let centre = n - lag;
            let rarest = self
                .seasonal
                .range(centre.saturating_sub(slack)..=(centre + slack).min(n - 1))
                .fold(0.0, |a: f64, &b| a.min(b));
            reference = Some(reference.map_or(rarest, |r| r.max(rarest)));
        }
        if n == days * day + slack {
            self.seasonal.pop_front();
        }
        self.seasonal.push_back(ln_p);
        reference.unwrap_or(0.0)
    }
}

/// The naive stand-in forecast: the previous value, with one sigma estimated robustly from
/// the median of its recent absolute errors (so an early burst barely widens it).
#[derive(Debug, Clone)]
struct Early {
    last: Option<f64>,
    errors: RollingQuantiles,
    min: usize,
}

impl Early {
    fn new(min: usize) -> Self {
        Early {
            last: None,
            errors: RollingQuantiles::new(4 * min),
            min,
        }
    }

    /// The forecast for `value` and its sigma, made before it, once `min` errors are held;
    /// then takes it in.
    fn next(&mut self, value: f64) -> Option<(f64, f64)> {
        let mut out = None;
        if let Some(last) = self.last {
            if self.errors.len() >= self.min {
                // the median absolute error over 0.6745 estimates a normal sigma
                out = self.errors.quantile(0.5).map(|mad| {
                    let floor = 1e-9 * (1.0 + last.abs());
                    (last, (mad / 0.674_5).max(floor))
                });
            }
            self.errors.push((value - last).abs());
        }
        self.last = Some(value);
        out
    }
}

/// The mean clipped deviation over the last `len` points and the history of that mean.
#[derive(Debug, Clone)]
struct Sustained {
    len: usize,
    window: VecDeque<f64>,
    sum: f64,
    history: RollingQuantiles,
}

impl Sustained {
    fn new(len: usize, history: usize) -> Self {
        Sustained {
            len,
            window: VecDeque::with_capacity(len),
            sum: 0.0,
            history: RollingQuantiles::new(history),
        }
    }

    /// Takes in a clipped deviation; the log tail probability of the new mean among the past
    /// means (fitted beyond the `1 - tail` quantile) once `min` of them are held.
    fn push(&mut self, clipped: f64, min: usize, tail: f64) -> Option<f64> {
        if self.window.len() == self.len
            && let Some(old) = self.window.pop_front()
        {
            self.sum -= old;
        }
        self.window.push_back(clipped);
        self.sum += clipped;
        if self.window.len() < self.len {
            return None;
        }
        let m = self.sum / self.len as f64;
        let out = (self.history.len() >= min).then(|| self.history.ln_exceedance(m, tail));
        self.history.push(m);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// A daily pattern at 5 minutes with deterministic noise, plus `extra(i)`.
    fn run(n: usize, extra: impl Fn(usize) -> f64) -> Vec<Verdict> {
        run_with(DetectorParams::default(), n, extra)
    }

    fn run_with(params: DetectorParams, n: usize, extra: impl Fn(usize) -> f64) -> Vec<Verdict> {
        let mut d = Detector::new(params.check().unwrap(), 0);
        let mut s: u64 = 3;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let noise = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                let v = 50.0 + 20.0 * phase.sin() + 2.0 * noise + extra(i);
                d.update(i as Time * 300, v, &[]).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_spike_stands_out_and_normal_noise_stays_quiet() {
        let v = run(1500, |i| if i == 1200 { 25.0 } else { 0.0 });
        assert!(
            v[1200].anomalous && v[1200].deviation > 3.0,
            "{:?}",
            v[1200]
        );
        let top = (0..v.len())
            .max_by(|&a, &b| v[a].score.total_cmp(&v[b].score))
            .unwrap();
        assert_eq!(top, 1200);
        let quiet = v[600..1199].iter().filter(|x| x.score > 0.99).count();
        assert!(quiet <= 3, "{quiet} normal points scored above 0.99");
        assert!(v.iter().all(|x| (0.0..=1.0).contains(&x.score)));
    }

    #[test]
    fn nothing_is_scored_during_the_warmup() {
        let d = Detector::new(DetectorParams::default().check().unwrap(), 0);
        let warmup = d.warmup();
        assert!(
            warmup < d.forecaster().warmup(),
            "the stand-in scores early"
        );
        let v = run(warmup + 50, |i| if i == warmup + 20 { 25.0 } else { 0.0 });
        assert!(v[..warmup].iter().all(|x| x.score == 0.0));
        assert!(v[warmup..].iter().all(|x| x.expected.is_some()));
        assert!(v[warmup + 20].score > 0.5, "{:?}", v[warmup + 20]);
        // without the stand-in, nothing is forecast before the forecaster's warm-up
        let params = DetectorParams {
            early_min: 0,
            ..Default::default()
        };
        let d = Detector::new(params.clone().check().unwrap(), 0);
        let warmup = d.warmup();
        assert_eq!(warmup, d.forecaster().warmup());
        let v = run_with(params, warmup + 50, |_| 0.0);
        assert!(
            v[..warmup - 60]
                .iter()
                .all(|x| x.score == 0.0 && x.expected.is_none())
        );
        assert!(v[warmup..].iter().all(|x| x.expected.is_some()));
    }

    #[test]
    fn a_level_shift_rebaselines_instead_of_alarming_for_ever() {
        let v = run(1500, |i| if i >= 1000 { 15.0 } else { 0.0 });
        let shifted = &v[1000..1010];
        assert!(shifted.iter().any(|x| x.rebaselined), "never re-baselined");
        assert!(shifted[0].anomalous);
        // a day later the new level is normal
        let late = v[1300..].iter().filter(|x| x.anomalous).count();
        assert!(late <= 10, "{late} anomalous points a day after the shift");
        assert!(
            v[1300..]
                .iter()
                .all(|x| x.expected.unwrap() > 40.0 || x.value < 40.0)
        );
    }

    #[test]
    fn severity_counts_persistent_anomalies() {
        // three isolated spikes versus three in a row
        let v = run(1300, |i| match i {
            1000 | 1050 | 1100 => 25.0,
            1200..=1202 => 25.0,
            _ => 0.0,
        });
        assert!(v[1000].severity <= 1.0 / 6.0 + 1e-9, "{:?}", v[1000]);
        assert!(v[1202].severity >= 3.0 / 6.0 - 1e-9, "{:?}", v[1202]);
    }

    #[test]
    fn a_denser_run_of_familiar_spikes_is_scored_by_the_long_window() {
        // a spike every 60 points, then one every 12 from 2000: no single spike is new
        let spikes = |i: usize| {
            let every = if i >= 2000 { 12 } else { 60 };
            if i.is_multiple_of(every) { 25.0 } else { 0.0 }
        };
        let peak = |v: &[Verdict]| v[2000..2150].iter().map(|x| x.score).fold(0.0, f64::max);
        let with = run_with(DetectorParams::default(), 2150, spikes);
        let without = run_with(
            DetectorParams {
                sustained_long: 0,
                ..Default::default()
            },
            2150,
            spikes,
        );
        let before = with[1500..1990].iter().map(|x| x.score).fold(0.0, f64::max);
        assert!(
            peak(&with) > before && peak(&with) > peak(&without) + 0.05,
            "dense {} vs before {before}, without the long window {}",
            peak(&with),
            peak(&without)
        );
    }

    #[test]
    fn a_spike_that_recurs_daily_is_no_news_and_neither_is_its_echo() {
        // a spike near 02:00 every day, a few points early or late
        let jitter = [0, 2, -1, 1, -2, 1, 0];
        let recurring = |i: usize| {
            let day = i / 288;
            let at = (24 + jitter[day % jitter.len()]) as usize;
            if i % 288 == at { 25.0 } else { 0.0 }
        };
        let peak = |v: &[Verdict], from: usize| {
            v[from..from + 288]
                .iter()
                .map(|x| x.score)
                .fold(0.0, f64::max)
        };
        let with = run(288 * 7, recurring);
        let without = run_with(
            DetectorParams {
                seasonal_days: 0,
                ..Default::default()
            },
            288 * 7,
            recurring,
        );
        // from the third day on, the recurring spike (and the hole a day after each, where
        // the daily lags expected it) scores far lower than without the memory
        // the first one is news; from then on the memory only ever lowers the score, and
        // most days the repeat (and the hole a day after it, where the daily lags expected
        // it) no longer alarms
        assert!(with[288 + 26].score > 0.5, "{:?}", with[288 + 26]);
        let alarms = |v: &[Verdict]| (2..7).filter(|&d| peak(v, 288 * d) > 0.15).count();
        for day in 2..7 {
            let (w, wo) = (peak(&with, 288 * day), peak(&without, 288 * day));
            assert!(w <= wo + 1e-9, "day {day}: {w} with, {wo} without");
        }
        assert!(
            alarms(&with) <= 2 && alarms(&without) >= alarms(&with) + 2,
            "{} days alarm with the memory, {} without",
            alarms(&with),
            alarms(&without)
        );
        // a new spike at another time of day still stands out: the day's top score
        let new = 288 * 6 + 150;
        let v = run(288 * 7, |i| {
            recurring(i) + if i == new { 25.0 } else { 0.0 }
        });
        let top = (288 * 6..288 * 7)
            .max_by(|&a, &b| v[a].score.total_cmp(&v[b].score))
            .unwrap();
        assert!(top == new && v[new].score > 0.3, "{:?}", v[new]);
    }

    #[test]
    fn params_name_the_bad_field() {
        let field = |p: DetectorParams| match p.check() {
            Err(Error::InvalidParam { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(DetectorParams {
                threshold: 0.0,
                ..Default::default()
            }),
            "threshold"
        );
        assert_eq!(
            field(DetectorParams {
                level_shift_points: 9,
                ..Default::default()
            }),
            "level_shift_points"
        );
        assert!(serde_json::from_str::<DetectorParams>(r#"{"threshold": 4, "sigma": 3}"#).is_err());
        let p: DetectorParams = serde_json::from_str(r#"{"threshold": 4}"#).unwrap();
        assert_eq!((p.threshold, p.confidence), (4.0, 0.95));
    }
}
