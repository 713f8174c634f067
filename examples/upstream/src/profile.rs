//! The example upstream's behaviour as a pure function of a profile, the scenario time and a
//! seed: [`ValidProfile::params_at`] gives the effective parameters (latency distribution,
//! error rate, CPU per request, memory held, background CPU) at a moment, and [`Sampler`]
//! draws each request's latency and outcome from them with a seeded RNG.
//!
//! A profile is a [`Base`] and a list of [`Effect`]s, each active from its `at_s` (scenario
//! seconds) until its optional `until_s`. With no effects the service is steady. Effects
//! compose: latency factors multiply, error rates combine as independent failures, memory
//! and background CPU add up. Nothing here reads a clock: the binary turns wall time into
//! scenario time and asks.
//!
//! ```yaml
//! base: {latency_median_ms: 20, latency_sigma: 0.25, error_rate: 0.001}
//! effects:
//!   - {kind: diurnal, amplitude: 0.3}
//!   - {kind: creeping_latency, at_s: 1200, growth_per_hour: 4}
//! ```

use std::f64::consts::PI;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, FieldError, Result};

/// The longest latency a request is ever held, in milliseconds, however wide the distribution.
pub const MAX_LATENCY_MS: f64 = 60_000.0;
/// The most memory a profile may hold, in MiB: a guard against a typo filling the machine.
pub const MAX_MEMORY_MB: f64 = 16_384.0;

/// A profile as written (YAML or JSON). Check it with [`Profile::check`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The behaviour before (and beneath) any effect. Default: see [`Base`].
    #[serde(default)]
    pub base: Base,
    /// What changes over time, in any order. Default: none (a steady service).
    #[serde(default)]
    pub effects: Vec<Effect>,
}

/// The steady behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Base {
    /// Median latency, milliseconds. Default: 20.
    pub latency_median_ms: f64,
    /// Spread of the lognormal latency: the standard deviation of its logarithm (p99 is the
    /// median times `exp(2.326 * sigma)`). Default: 0.25.
    pub latency_sigma: f64,
    /// Fraction of requests that fail, from 0 to 1. Default: 0.
    pub error_rate: f64,
    /// HTTP status of a failed request. Default: 503.
    pub error_status: u16,
    /// CPU burnt per request, milliseconds of busy work (part of its latency). Default: 0.
    pub cpu_ms: f64,
    /// Memory held, MiB: a real allocation, every page touched. Default: 0.
    pub memory_mb: f64,
}

impl Default for Base {
    fn default() -> Self {
        Base {
            latency_median_ms: 20.0,
            latency_sigma: 0.25,
            error_rate: 0.0,
            error_status: 503,
            cpu_ms: 0.0,
            memory_mb: 0.0,
        }
    }
}

/// One change over time, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// A daily cycle of latency (load-driven slowness): normal, not a fault.
    Diurnal(Diurnal),
    /// Slowly wandering latency and a wider distribution: normal, not a fault.
    Noise(Noise),
    /// Latency that grows steadily from `at_s`: a fault.
    CreepingLatency(CreepingLatency),
    /// A share of requests failing from `at_s` on: a fault.
    StepFailure(StepFailure),
    /// Memory that grows from `at_s`, slowing requests as it does: a fault.
    MemoryLeak(MemoryLeak),
    /// A CPU-hungry neighbour from `at_s`: background CPU use and slower requests: a fault.
    CpuContention(CpuContention),
}

/// `kind: diurnal`: the median latency times `1 + amplitude * cos(2π (t - peak_at_s) / period_s)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diurnal {
    /// When it starts, scenario seconds. Default: 0.
    #[serde(default)]
    pub at_s: f64,
    /// When it stops, scenario seconds. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    /// Relative swing of the median latency, from 0 to below 1. Default: 0.3.
    #[serde(default = "d_diurnal_amplitude")]
    pub amplitude: f64,
    /// Length of a cycle, scenario seconds. Default: 86400 (a day).
    #[serde(default = "d_day")]
    pub period_s: f64,
    /// When in the cycle latency peaks, scenario seconds. Default: 50400 (14:00).
    #[serde(default = "d_peak")]
    pub peak_at_s: f64,
}

/// `kind: noise`: the median times `1 + amplitude * n(t)`, with `n` a smooth seeded noise in
/// [-1, 1] that changes over about `period_s`, a wider distribution and extra errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    /// When it starts, scenario seconds. Default: 0.
    #[serde(default)]
    pub at_s: f64,
    /// When it stops, scenario seconds. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    /// Relative swing of the median latency, from 0 to below 1. Default: 0.2.
    #[serde(default = "d_noise_amplitude")]
    pub amplitude: f64,
    /// How long the noise takes to wander from one value to the next, scenario seconds.
    /// Default: 300.
    #[serde(default = "d_noise_period")]
    pub period_s: f64,
    /// Added to the latency sigma. Default: 0.1.
    #[serde(default = "d_extra_sigma")]
    pub extra_sigma: f64,
    /// Extra fraction of failing requests. Default: 0.
    #[serde(default)]
    pub error_rate: f64,
}

/// `kind: creeping_latency`: the median times `1 + growth_per_hour * hours since at_s`, at most
/// `max_factor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreepingLatency {
    /// When it starts, scenario seconds. Required.
    pub at_s: f64,
    /// When it stops (latency is back to normal), scenario seconds. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    /// Growth of the median per scenario hour, as a multiple of the median without it (1 is
    /// +100% an hour). Required, positive.
    pub growth_per_hour: f64,
    /// The largest factor it reaches. Default: 100.
    #[serde(default = "d_max_factor")]
    pub max_factor: f64,
}

/// `kind: step_failure`: from `at_s`, `error_rate` of requests fail and the median is
/// `latency_factor` times longer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFailure {
    /// When it starts, scenario seconds. Required.
    pub at_s: f64,
    /// When it stops, scenario seconds. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    /// Fraction of requests that fail, from 0 to 1. Required.
    pub error_rate: f64,
    /// Factor on the median latency. Default: 1.
    #[serde(default = "d_one")]
    pub latency_factor: f64,
}

/// `kind: memory_leak`: from `at_s`, `mb_per_hour` more memory held each scenario hour (up to
/// `max_mb`), each leaked MiB making the median `latency_per_mb` longer (relative).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLeak {
    /// When it starts, scenario seconds. Required.
    pub at_s: f64,
    /// When it stops (the memory is released, as by a restart), scenario seconds. Default:
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    /// MiB leaked per scenario hour. Required, positive.
    pub mb_per_hour: f64,
    /// The most it leaks, MiB. Default: 512.
    #[serde(default = "d_max_mb")]
    pub max_mb: f64,
    /// Relative latency added per leaked MiB (0.01: 100 MiB double the median). Default: 0.
    #[serde(default)]
    pub latency_per_mb: f64,
}

/// `kind: cpu_contention`: from `at_s`, reaching full strength after `ramp_s`, a background
/// thread burns `background_cores` of CPU, each request burns `cpu_factor` times its CPU,
/// and the median is `latency_factor` times longer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuContention {
    /// When it starts, scenario seconds. Required.
    pub at_s: f64,
    /// When it stops, scenario seconds. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_s: Option<f64>,
    /// CPU burnt in the background at full strength, in cores (0 to 8). Default: 0.5.
    #[serde(default = "d_half")]
    pub background_cores: f64,
    /// Factor on the CPU burnt per request at full strength. Default: 1.
    #[serde(default = "d_one")]
    pub cpu_factor: f64,
    /// Factor on the median latency at full strength. Default: 2.
    #[serde(default = "d_two")]
    pub latency_factor: f64,
    /// Scenario seconds from `at_s` to full strength, linearly; 0 is a step. Default: 0.
    #[serde(default)]
    pub ramp_s: f64,
}

impl Noise {
    /// The noise's own random stream: from its fields, not its place in the list, so a
    /// profile started without its later effects and given them at run time wanders the same
    /// as the whole profile.
    fn stream(&self) -> u64 {
        self.at_s.to_bits()
            ^ self.amplitude.to_bits().rotate_left(17)
            ^ self.period_s.to_bits().rotate_left(31)
    }
}

fn d_diurnal_amplitude() -> f64 {
    0.3
}
fn d_day() -> f64 {
    86_400.0
}
fn d_peak() -> f64 {
    50_400.0
}
fn d_noise_amplitude() -> f64 {
    0.2
}
fn d_noise_period() -> f64 {
    300.0
}
fn d_extra_sigma() -> f64 {
    0.1
}
fn d_max_factor() -> f64 {
    100.0
}
fn d_one() -> f64 {
    1.0
}
fn d_two() -> f64 {
    2.0
}
fn d_half() -> f64 {
    0.5
}
fn d_max_mb() -> f64 {
    512.0
}

impl Effect {
    /// Its `kind` as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Diurnal(_) => "diurnal",
            Effect::Noise(_) => "noise",
            Effect::CreepingLatency(_) => "creeping_latency",
            Effect::StepFailure(_) => "step_failure",
            Effect::MemoryLeak(_) => "memory_leak",
            Effect::CpuContention(_) => "cpu_contention",
        }
    }

    /// When it starts, scenario seconds.
    pub fn at_s(&self) -> f64 {
        match self {
            Effect::Diurnal(e) => e.at_s,
            Effect::Noise(e) => e.at_s,
            Effect::CreepingLatency(e) => e.at_s,
            Effect::StepFailure(e) => e.at_s,
            Effect::MemoryLeak(e) => e.at_s,
            Effect::CpuContention(e) => e.at_s,
        }
    }

    /// When it stops, scenario seconds, if ever.
    pub fn until_s(&self) -> Option<f64> {
        match self {
            Effect::Diurnal(e) => e.until_s,
            Effect::Noise(e) => e.until_s,
            Effect::CreepingLatency(e) => e.until_s,
            Effect::StepFailure(e) => e.until_s,
            Effect::MemoryLeak(e) => e.until_s,
            Effect::CpuContention(e) => e.until_s,
        }
    }

    /// Whether it is a fault (something a migration should answer), not normal variation.
    pub fn is_fault(&self) -> bool {
        !matches!(self, Effect::Diurnal(_) | Effect::Noise(_))
    }

    /// Whether it acts at scenario time `t_s`.
    pub fn active_at(&self, t_s: f64) -> bool {
        t_s >= self.at_s() && self.until_s().is_none_or(|u| t_s < u)
    }

    fn check(&self) -> Result<(), FieldError> {
        let at = self.at_s();
        check(at.is_finite() && at >= 0.0, "at_s", || {
            format!("must be a time of 0 or later, got {at}")
        })?;
        if let Some(u) = self.until_s() {
            check(u.is_finite() && u > at, "until_s", || {
                format!("must be later than at_s ({at}), got {u}")
            })?;
        }
        match self {
            Effect::Diurnal(e) => {
                fraction_below_one("amplitude", e.amplitude)?;
                positive("period_s", e.period_s)?;
                check(e.peak_at_s.is_finite(), "peak_at_s", || {
                    format!("must be a time, got {}", e.peak_at_s)
                })
            }
            Effect::Noise(e) => {
                fraction_below_one("amplitude", e.amplitude)?;
                positive("period_s", e.period_s)?;
                in_range("extra_sigma", e.extra_sigma, 0.0, 3.0)?;
                in_range("error_rate", e.error_rate, 0.0, 1.0)
            }
            Effect::CreepingLatency(e) => {
                positive("growth_per_hour", e.growth_per_hour)?;
                check(
                    e.max_factor.is_finite() && e.max_factor >= 1.0,
                    "max_factor",
                    || format!("must be at least 1, got {}", e.max_factor),
                )
            }
            Effect::StepFailure(e) => {
                in_range("error_rate", e.error_rate, 0.0, 1.0)?;
                positive("latency_factor", e.latency_factor)
            }
            Effect::MemoryLeak(e) => {
                positive("mb_per_hour", e.mb_per_hour)?;
                positive("max_mb", e.max_mb)?;
                in_range("max_mb", e.max_mb, 0.0, MAX_MEMORY_MB)?;
                in_range("latency_per_mb", e.latency_per_mb, 0.0, 1.0)
            }
            Effect::CpuContention(e) => {
                in_range("background_cores", e.background_cores, 0.0, 8.0)?;
                positive("cpu_factor", e.cpu_factor)?;
                positive("latency_factor", e.latency_factor)?;
                in_range("ramp_s", e.ramp_s, 0.0, f64::MAX)
            }
        }
    }
}

fn check(ok: bool, field: &str, message: impl FnOnce() -> String) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, message()))
    }
}

fn positive(field: &str, v: f64) -> Result<(), FieldError> {
    check(v.is_finite() && v > 0.0, field, || {
        format!("must be positive, got {v}")
    })
}

fn in_range(field: &str, v: f64, lo: f64, hi: f64) -> Result<(), FieldError> {
    check(v.is_finite() && v >= lo && v <= hi, field, || {
        format!("must be from {lo} to {hi}, got {v}")
    })
}

fn fraction_below_one(field: &str, v: f64) -> Result<(), FieldError> {
    check(v.is_finite() && (0.0..1.0).contains(&v), field, || {
        format!("must be from 0 to below 1, got {v}")
    })
}

impl Profile {
    /// Checks every value, naming the first bad field (`base.error_rate`, `effects[2].at_s`);
    /// the error's place is `profile`.
    pub fn check(self) -> Result<ValidProfile> {
        self.check_fields().map_err(|e| e.place("profile", None))?;
        Ok(ValidProfile(self))
    }

    pub(crate) fn check_fields(&self) -> Result<(), FieldError> {
        let b = &self.base;
        let base = |e: FieldError| e.under("base");
        check(
            b.latency_median_ms.is_finite()
                && b.latency_median_ms > 0.0
                && b.latency_median_ms <= MAX_LATENCY_MS,
            "latency_median_ms",
            || {
                format!(
                    "must be above 0 and at most {MAX_LATENCY_MS}, got {}",
                    b.latency_median_ms
                )
            },
        )
        .map_err(base)?;
        in_range("latency_sigma", b.latency_sigma, 0.0, 3.0).map_err(base)?;
        in_range("error_rate", b.error_rate, 0.0, 1.0).map_err(base)?;
        check(
            (100..=999).contains(&b.error_status),
            "error_status",
            || format!("{} is not an HTTP status (100 to 999)", b.error_status),
        )
        .map_err(base)?;
        in_range("cpu_ms", b.cpu_ms, 0.0, 1000.0).map_err(base)?;
        in_range("memory_mb", b.memory_mb, 0.0, MAX_MEMORY_MB).map_err(base)?;
        for (i, e) in self.effects.iter().enumerate() {
            e.check()
                .map_err(|err| err.under(&format!("effects[{i}]")))?;
        }
        Ok(())
    }
}

/// A checked profile: every value in range. Serializes as the [`Profile`] it was made from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ValidProfile(Profile);

/// The effective parameters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    /// Median latency, milliseconds.
    pub latency_median_ms: f64,
    /// Lognormal sigma of the latency.
    pub latency_sigma: f64,
    /// Fraction of requests that fail.
    pub error_rate: f64,
    /// HTTP status of a failed request.
    pub error_status: u16,
    /// CPU burnt per request, milliseconds.
    pub cpu_ms: f64,
    /// Memory held, MiB.
    pub memory_mb: f64,
    /// CPU burnt in the background, in cores.
    pub background_cores: f64,
}

impl Params {
    /// The latency quantile `q` (0 < q < 1) of the lognormal distribution, milliseconds.
    pub fn latency_quantile_ms(&self, q: f64) -> f64 {
        (self.latency_median_ms * (self.latency_sigma * inverse_normal(q)).exp())
            .min(MAX_LATENCY_MS)
    }

    /// The expected latency, milliseconds.
    pub fn latency_mean_ms(&self) -> f64 {
        self.latency_median_ms * (self.latency_sigma * self.latency_sigma / 2.0).exp()
    }
}

impl ValidProfile {
    /// Checks `p` for a caller that places the error itself.
    pub(crate) fn checked(p: Profile) -> Result<ValidProfile, FieldError> {
        p.check_fields()?;
        Ok(ValidProfile(p))
    }

    /// A steady profile with the default [`Base`].
    pub fn steady() -> ValidProfile {
        ValidProfile(Profile::default())
    }

    /// The profile as written.
    pub fn profile(&self) -> &Profile {
        &self.0
    }

    /// The effective parameters at scenario time `t_s` for `seed` (which only the noise
    /// effects use: the same seed gives the same wander).
    pub fn params_at(&self, t_s: f64, seed: u64) -> Params {
        let b = &self.0.base;
        let mut median = b.latency_median_ms;
        let mut sigma = b.latency_sigma;
        let mut error = b.error_rate;
        let mut cpu = b.cpu_ms;
        let mut memory = b.memory_mb;
        let mut background = 0.0;
        for effect in &self.0.effects {
            if !effect.active_at(t_s) {
                continue;
            }
            let since = t_s - effect.at_s();
            match effect {
                Effect::Diurnal(e) => {
                    median *=
                        1.0 + e.amplitude * (2.0 * PI * (t_s - e.peak_at_s) / e.period_s).cos();
                }
                Effect::Noise(e) => {
                    let n = value_noise(mix(seed, e.stream()), t_s / e.period_s);
                    median *= 1.0 + e.amplitude * n;
                    sigma += e.extra_sigma;
                    error = either(error, e.error_rate);
                }
                Effect::CreepingLatency(e) => {
                    median *= (1.0 + e.growth_per_hour * since / 3600.0).min(e.max_factor);
                }
                Effect::StepFailure(e) => {
                    error = either(error, e.error_rate);
                    median *= e.latency_factor;
                }
                Effect::MemoryLeak(e) => {
                    let leaked = (e.mb_per_hour * since / 3600.0).min(e.max_mb);
                    memory += leaked;
                    median *= 1.0 + e.latency_per_mb * leaked;
                }
                Effect::CpuContention(e) => {
                    let r = if e.ramp_s > 0.0 {
                        (since / e.ramp_s).min(1.0)
                    } else {
                        1.0
                    };
                    background += e.background_cores * r;
                    cpu *= 1.0 + (e.cpu_factor - 1.0) * r;
                    median *= 1.0 + (e.latency_factor - 1.0) * r;
                }
            }
        }
        Params {
            latency_median_ms: median.min(MAX_LATENCY_MS),
            latency_sigma: sigma,
            error_rate: error.clamp(0.0, 1.0),
            error_status: b.error_status,
            cpu_ms: cpu.min(1000.0),
            memory_mb: memory.min(MAX_MEMORY_MB),
            background_cores: background.min(8.0),
        }
    }

    /// The kinds of the effects acting at `t_s`, in profile order.
    pub fn active_at(&self, t_s: f64) -> Vec<&'static str> {
        self.0
            .effects
            .iter()
            .filter(|e| e.active_at(t_s))
            .map(Effect::kind)
            .collect()
    }

    /// When the first fault starts (creeping latency, step failure, memory leak, CPU
    /// contention), scenario seconds; `None` for a profile of normal variation only.
    pub fn fault_onset_s(&self) -> Option<f64> {
        self.0
            .effects
            .iter()
            .filter(|e| e.is_fault())
            .map(Effect::at_s)
            .reduce(f64::min)
    }

    /// The profile without the effects that start after `t_s`: what to start an instance
    /// with when those are to be injected later through `POST /_control/effects`.
    pub fn until(&self, t_s: f64) -> ValidProfile {
        let mut p = self.0.clone();
        p.effects.retain(|e| e.at_s() <= t_s);
        ValidProfile(p)
    }

    /// The effects that start after `t_s`, earliest first: the ones [`ValidProfile::until`]
    /// leaves out.
    pub fn effects_after(&self, t_s: f64) -> Vec<Effect> {
        let mut v: Vec<Effect> = self
            .0
            .effects
            .iter()
            .filter(|e| e.at_s() > t_s)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.at_s().total_cmp(&b.at_s()));
        v
    }

    /// This profile with `effect` added, checked; the error names `effects[N]` and the field.
    pub fn with_effect(&self, effect: Effect) -> Result<ValidProfile> {
        let mut p = self.0.clone();
        p.effects.push(effect);
        p.check()
    }

    /// The profile as one line of JSON, for `--profile-json`.
    pub fn to_json(&self) -> String {
        // A profile is plain numbers and strings: serializing it cannot fail.
        serde_json::to_string(&self.0).unwrap_or_default()
    }
}

/// Reads and checks a profile file, YAML or JSON; errors name `FILE:LINE:COLUMN`.
pub fn load(path: &Path) -> Result<ValidProfile> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(&text, &path.display().to_string())
}

/// Parses and checks a profile in YAML (JSON is YAML too); errors start with `origin`.
pub fn parse_yaml(text: &str, origin: &str) -> Result<ValidProfile> {
    let p: Profile = serde_yaml_ng::from_str(text).map_err(|e| crate::yaml_error(origin, e))?;
    p.check_fields().map_err(|e| e.place(origin, Some(text)))?;
    Ok(ValidProfile(p))
}

/// Parses and checks a profile in JSON; errors start with `origin` (e.g. `--profile-json`).
pub fn parse_json(text: &str, origin: &str) -> Result<ValidProfile> {
    let p: Profile = serde_json::from_str(text).map_err(|e| crate::json_error(origin, e))?;
    p.check_fields().map_err(|e| e.place(origin, Some(text)))?;
    Ok(ValidProfile(p))
}

/// Parses one effect in JSON (for `POST /_control/effects`); check it by adding it with
/// [`ValidProfile::with_effect`].
pub fn parse_effect_json(text: &str, origin: &str) -> Result<Effect> {
    serde_json::from_str(text).map_err(|e| crate::json_error(origin, e))
}

/// Draws each request's latency and outcome from [`Params`] with a seeded RNG: the same seed
/// and stream give the same sequence of draws.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: fastrand::Rng,
}

/// One request's draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// How long to hold the request, milliseconds.
    pub latency_ms: f64,
    /// Whether it fails.
    pub error: bool,
}

impl Sampler {
    /// A sampler for `seed`; `stream` (an instance index) gives instances of one seed their
    /// own sequences.
    pub fn new(seed: u64, stream: u64) -> Sampler {
        Sampler {
            rng: fastrand::Rng::with_seed(mix(seed, stream)),
        }
    }

    /// The next request's latency and outcome.
    pub fn sample(&mut self, p: &Params) -> Sample {
        // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
        let u1 = 1.0 - self.rng.f64();
        let u2 = self.rng.f64();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos();
        let latency_ms = (p.latency_median_ms * (p.latency_sigma * z).exp()).min(MAX_LATENCY_MS);
        // Always drawn, so the latency sequence does not depend on the error rate.
        let error = self.rng.f64() < p.error_rate;
        Sample { latency_ms, error }
    }
}

/// The chance that either of two independent failures happens.
fn either(a: f64, b: f64) -> f64 {
    a + b - a * b
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seed derived from two numbers (a scenario seed and a group or instance index).
pub fn mix(seed: u64, stream: u64) -> u64 {
    splitmix(seed ^ splitmix(stream))
}

/// A value in [-1, 1] for lattice point `k`.
fn lattice(seed: u64, k: i64) -> f64 {
    let h = mix(seed, k as u64);
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Smooth value noise in [-1, 1]: seeded values at whole `x`, eased in between.
fn value_noise(seed: u64, x: f64) -> f64 {
    let k = x.floor();
    let f = x - k;
    let s = f * f * (3.0 - 2.0 * f);
    let a = lattice(seed, k as i64);
    let b = lattice(seed, k as i64 + 1);
    a + (b - a) * s
}

/// The standard normal quantile; `q` is clamped into (0, 1), so it is always finite.
pub fn inverse_normal(q: f64) -> f64 {
    shadowplane_model::stats::normal_quantile(q.clamp(1e-300, 1.0 - 1e-16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(yaml: &str) -> ValidProfile {
        parse_yaml(yaml, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn steady_is_the_base_at_every_time() {
        let p = profile("base: {latency_median_ms: 30, error_rate: 0.01, memory_mb: 4}");
        for t in [0.0, 10.0, 86_400.0 * 3.0] {
            let q = p.params_at(t, 7);
            assert_eq!(q.latency_median_ms, 30.0);
            assert_eq!(q.error_rate, 0.01);
            assert_eq!(q.memory_mb, 4.0);
            assert_eq!(q.background_cores, 0.0);
        }
        assert_eq!(p.fault_onset_s(), None);
        assert!(p.active_at(5.0).is_empty());
    }

    #[test]
    fn creeping_degradation_raises_expected_latency_monotonically() {
        let p = profile(
            "effects: [{kind: creeping_latency, at_s: 600, growth_per_hour: 2, max_factor: 5}]",
        );
        assert_eq!(p.params_at(599.0, 1).latency_median_ms, 20.0);
        let means: Vec<f64> = (0..200)
            .map(|i| p.params_at(i as f64 * 60.0, 1).latency_mean_ms())
            .collect();
        assert!(means.windows(2).all(|w| w[1] >= w[0]), "{means:?}");
        // After one hour of growth: 1 + 2 = 3 times the median; capped at 5 later.
        let hour_on = p.params_at(4200.0, 1).latency_median_ms;
        assert!((hour_on - 60.0).abs() < 1e-9, "{hour_on}");
        assert_eq!(p.params_at(20_000.0, 1).latency_median_ms, 100.0);
        // And the samples follow: each half hour's measured median is above the last one's.
        let mut s = Sampler::new(3, 0);
        let medians: Vec<f64> = (0..6)
            .map(|h| {
                let q = p.params_at(600.0 + h as f64 * 1800.0, 1);
                median((0..400).map(|_| s.sample(&q).latency_ms).collect())
            })
            .collect();
        assert!(medians.windows(2).all(|w| w[1] > w[0]), "{medians:?}");
    }

    #[test]
    fn step_failure_flips_at_its_time_and_ends_at_until() {
        let p = profile(
            "effects: [{kind: step_failure, at_s: 1000, until_s: 2000, error_rate: 0.5, \
             latency_factor: 3}]",
        );
        assert_eq!(p.params_at(999.999, 1).error_rate, 0.0);
        let during = p.params_at(1000.0, 1);
        assert_eq!(during.error_rate, 0.5);
        assert_eq!(during.latency_median_ms, 60.0);
        assert_eq!(p.params_at(2000.0, 1).error_rate, 0.0);
        assert_eq!(p.fault_onset_s(), Some(1000.0));
        assert_eq!(p.active_at(1500.0), vec!["step_failure"]);
        let mut s = Sampler::new(9, 0);
        let failed = (0..2000).filter(|_| s.sample(&during).error).count();
        assert!(
            (900..1100).contains(&failed),
            "{failed} of 2000 failed at rate 0.5"
        );
    }

    #[test]
    fn error_rates_combine_as_independent_failures() {
        let p = profile(
            "base: {error_rate: 0.1}\neffects: [{kind: step_failure, at_s: 0, error_rate: 0.5}]",
        );
        assert!((p.params_at(1.0, 1).error_rate - 0.55).abs() < 1e-12);
    }

    #[test]
    fn the_same_seed_gives_the_same_draws_and_another_seed_others() {
        let p = profile("effects: [{kind: noise, amplitude: 0.5, period_s: 60}]");
        let draws = |seed: u64, stream: u64| {
            let mut s = Sampler::new(seed, stream);
            (0..50)
                .map(|i| s.sample(&p.params_at(i as f64 * 7.0, seed)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(42, 0), draws(42, 0));
        assert_ne!(draws(42, 0), draws(43, 0));
        assert_ne!(draws(42, 0), draws(42, 1));
        // The noise itself is a function of the seed.
        let wander = |seed| {
            (0..20)
                .map(|i| p.params_at(i as f64 * 30.0, seed).latency_median_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(wander(5), wander(5));
        assert_ne!(wander(5), wander(6));
    }

    #[test]
    fn noise_stays_within_its_amplitude_and_moves() {
        let p = profile("effects: [{kind: noise, amplitude: 0.25, period_s: 100}]");
        let m: Vec<f64> = (0..2000)
            .map(|i| p.params_at(i as f64 * 5.0, 11).latency_median_ms)
            .collect();
        assert!(
            m.iter().all(|v| (15.0..=25.0).contains(v)),
            "out of 20 ± 25%"
        );
        let (lo, hi) = m
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(*v), h.max(*v)));
        assert!(hi - lo > 5.0, "the noise hardly moves: {lo}..{hi}");
        assert!((p.params_at(0.0, 1).latency_sigma - 0.35).abs() < 1e-12);
    }

    #[test]
    fn diurnal_repeats_with_its_period_and_peaks_when_told() {
        let p = profile("effects: [{kind: diurnal, amplitude: 0.5, peak_at_s: 50400}]");
        let at = |t: f64| p.params_at(t, 1).latency_median_ms;
        for t in [0.0, 3_333.0, 50_400.0, 70_000.0] {
            assert!((at(t) - at(t + 86_400.0)).abs() < 1e-9, "t = {t}");
        }
        assert!((at(50_400.0) - 30.0).abs() < 1e-9);
        assert!(
            (at(50_400.0 - 43_200.0) - 10.0).abs() < 1e-9,
            "trough half a day off"
        );
        let day: Vec<f64> = (0..1440).map(|m| at(m as f64 * 60.0)).collect();
        let peak = day
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        assert_eq!(peak, Some(840), "the peak is at 14:00");
    }

    #[test]
    fn memory_leak_grows_to_its_cap_and_slows_requests() {
        let p = profile(
            "base: {memory_mb: 10}\neffects: [{kind: memory_leak, at_s: 100, mb_per_hour: 360, \
             max_mb: 100, latency_per_mb: 0.01}]",
        );
        assert_eq!(p.params_at(100.0, 1).memory_mb, 10.0);
        let ten_min = p.params_at(700.0, 1);
        assert!(
            (ten_min.memory_mb - 70.0).abs() < 1e-9,
            "{}",
            ten_min.memory_mb
        );
        assert!((ten_min.latency_median_ms - 20.0 * 1.6).abs() < 1e-9);
        assert_eq!(p.params_at(100_000.0, 1).memory_mb, 110.0);
    }

    #[test]
    fn cpu_contention_ramps_up() {
        let p = profile(
            "base: {cpu_ms: 2}\neffects: [{kind: cpu_contention, at_s: 0, ramp_s: 100, \
             background_cores: 0.4, cpu_factor: 3, latency_factor: 2}]",
        );
        let half = p.params_at(50.0, 1);
        assert!((half.background_cores - 0.2).abs() < 1e-12);
        assert!((half.cpu_ms - 4.0).abs() < 1e-12);
        assert!((half.latency_median_ms - 30.0).abs() < 1e-9);
        let full = p.params_at(1000.0, 1);
        assert!((full.background_cores - 0.4).abs() < 1e-12);
        assert!((full.latency_median_ms - 40.0).abs() < 1e-9);
    }

    #[test]
    fn samples_follow_the_lognormal() {
        let q = Params {
            latency_median_ms: 50.0,
            latency_sigma: 0.5,
            ..ValidProfile::steady().params_at(0.0, 0)
        };
        let mut s = Sampler::new(1, 2);
        let mut v: Vec<f64> = (0..20_000).map(|_| s.sample(&q).latency_ms).collect();
        v.sort_by(f64::total_cmp);
        let p50 = v[10_000];
        let p99 = v[19_800];
        assert!((p50 / 50.0 - 1.0).abs() < 0.03, "p50 {p50}");
        let want = q.latency_quantile_ms(0.99);
        assert!((want - 50.0 * (0.5f64 * 2.326_348).exp()).abs() < 1e-3);
        assert!((p99 / want - 1.0).abs() < 0.06, "p99 {p99} against {want}");
        assert!((inverse_normal(0.5)).abs() < 1e-9);
        assert!((inverse_normal(0.975) - 1.959_964).abs() < 1e-5);
        assert!((inverse_normal(0.001) + 3.090_232).abs() < 1e-5);
    }

    #[test]
    fn until_and_effects_after_split_a_profile() {
        let p = profile(
            "effects:\n  - {kind: step_failure, at_s: 900, error_rate: 1}\n  - {kind: noise}\n  \
             - {kind: creeping_latency, at_s: 300, growth_per_hour: 1}\n",
        );
        let start = p.until(0.0);
        assert_eq!(start.active_at(10_000.0), vec!["noise"]);
        let later: Vec<_> = p.effects_after(0.0).iter().map(|e| e.at_s()).collect();
        assert_eq!(later, vec![300.0, 900.0]);
        let mut back = start;
        for e in p.effects_after(0.0) {
            back = back.with_effect(e).unwrap();
        }
        // The same parameters, noise included, though the noise moved up the list.
        for t in [0.0, 450.0, 1000.0, 5000.0] {
            assert_eq!(back.params_at(t, 3), p.params_at(t, 3), "at {t}");
        }
        assert_eq!(p.fault_onset_s(), Some(300.0));
        // JSON round trip.
        assert_eq!(parse_json(&p.to_json(), "json").unwrap(), p);
    }

    #[test]
    fn bad_profiles_name_the_place() {
        let cases = [
            (
                "base:\n  error_rate: 1.5\n",
                "t.yaml:2:3: base.error_rate: must be from 0 to 1, got 1.5",
            ),
            (
                "effects:\n  - kind: noise\n  - kind: step_failure\n    at_s: -1\n    error_rate: 0.1\n",
                "t.yaml:4:5: effects[1].at_s: must be a time of 0 or later, got -1",
            ),
            (
                "effects:\n  - {kind: memory_leak, at_s: 5, until_s: 5, mb_per_hour: 1}\n",
                "t.yaml:2:34: effects[0].until_s: must be later than at_s (5), got 5",
            ),
            (
                "effects:\n  - {kind: diurnal, amplitude: 1}\n",
                "t.yaml:2:21: effects[0].amplitude: must be from 0 to below 1, got 1",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_yaml(text, "t.yaml").unwrap_err().to_string(), want);
        }
        let e = parse_yaml("base: {latency_median: 20}\n", "t.yaml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.yaml:1:8: base: unknown field `latency_median`"),
            "{e}"
        );
        let e = parse_yaml("effects:\n  - {kind: noise, colour: red}\n", "t.yaml").unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        assert!(e.to_string().starts_with("t.yaml:2:"), "{e}");
        let e = parse_yaml("effects: [{kind: meltdown}]\n", "t.yaml").unwrap_err();
        assert!(e.to_string().contains("unknown variant `meltdown`"), "{e}");
        let e = parse_yaml("effects: [{kind: step_failure, at_s: 3}]\n", "t.yaml").unwrap_err();
        assert!(e.to_string().contains("missing field `error_rate`"), "{e}");
        let e = parse_json("{\"base\": {\"cpu_ms\": -1}}", "--profile-json").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--profile-json:1:11: base.cpu_ms: must be from 0 to 1000, got -1"
        );
        let e = parse_json("{\"base\": ", "--profile-json").unwrap_err();
        assert!(e.to_string().starts_with("--profile-json:1:9: "), "{e}");
    }
}
