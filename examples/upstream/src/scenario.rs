//! The scenario format: a reproducible run of the demo or the migration bench, as a YAML file
//! under `examples/scenarios/` (documented for users in `examples/scenarios/README.md`).
//!
//! A scenario says which groups run (a primary and a shadow, each with its instances,
//! instance type, price class and the [`profile`] its upstreams follow over
//! time), the load (rate over time, sessions), prices over time, the SLO and cost policy, the
//! time compression and the run length, and the seed every random draw derives from.
//!
//! [`load`] reads and checks a file into a [`Scenario`]: parse ([`ScenarioFile`], unknown
//! fields rejected), then validate; every error names `FILE:LINE:COLUMN` and the field.
//! A [`Scenario`] answers what a driver needs: the scenario time at a wall instant, the phase,
//! the request rate, prices and cost, when the fault starts and when the SLO is breached
//! without action, and the command line of each group's instances.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::profile::{self, Effect, Params, Profile, ValidProfile};
use crate::{Error, FieldError, Result};

/// The folder of the shipped scenarios, `examples/scenarios` in the source tree.
pub fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// The default program of a group: the example upstream, replaced by
/// [`LaunchContext::upstream`] in [`Scenario::launch`].
pub const UPSTREAM_PLACEHOLDER: &str = "{upstream}";

/// A scenario as written. See the field docs for defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Short name, shown in progress and reports (letters, digits, `-`, `_`, `.`). Default:
    /// the file's name without `.yaml`.
    #[serde(default)]
    pub name: Option<String>,
    /// What happens and what a good policy does, for people. Default: empty.
    #[serde(default)]
    pub description: String,
    /// The seed every random draw derives from: each group's noise and latencies, and the
    /// load generator's. Default: 1.
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Time compression: scenario seconds per wall second (60 runs an hour in a minute).
    /// Default: 1.
    #[serde(default = "d_one")]
    pub time_scale: f64,
    /// Scenario time when the run starts, seconds (21600 starts a day at 06:00). Default: 0.
    #[serde(default)]
    pub start_s: f64,
    /// Run length, scenario seconds. Required.
    pub duration_s: f64,
    /// Named stretches of the run, for the live display and the report: each from its `at_s`
    /// to the next one's. Default: one phase, `run`.
    #[serde(default)]
    pub phases: Vec<PhaseFile>,
    /// The service's name: its groups' Envoy clusters are named after it in the demo.
    /// Default: `demo`.
    #[serde(default = "d_service")]
    pub service: String,
    /// The resource groups: exactly one `primary` and one `shadow`. Required.
    pub groups: Vec<GroupFile>,
    /// The load the generator sends. Required.
    pub load: LoadFile,
    /// Price per instance-hour by instance type, over time. Default: none (cost not tracked).
    #[serde(default)]
    pub prices: Vec<PriceFile>,
    /// The service level objective. Default: see [`SloFile`].
    #[serde(default)]
    pub slo: SloFile,
    /// The cost policy. Default: see [`CostFile`].
    #[serde(default)]
    pub cost: CostFile,
    /// The reactive baseline of `cargo xtask bench migration`. Default: see [`ReactiveFile`].
    #[serde(default)]
    pub reactive: ReactiveFile,
}

fn d_seed() -> u64 {
    1
}
fn d_one() -> f64 {
    1.0
}
fn d_service() -> String {
    "demo".to_string()
}

/// A named stretch of the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseFile {
    /// When it starts, scenario seconds; phases in increasing order, the first at or before
    /// `start_s`. Required.
    pub at_s: f64,
    /// Its name, e.g. `steady`, `degrading`. Required, non-empty.
    pub name: String,
}

/// What a group does for the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves the traffic at the start.
    Primary,
    /// Learns from the primary and takes the traffic in a migration.
    Shadow,
}

impl Role {
    /// The lower-case name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Shadow => "shadow",
        }
    }
}

/// A resource group as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Its name: its Envoy cluster (letters, digits, `-`, `_`, `.`, at most 64), unique.
    /// Required.
    pub name: String,
    /// `primary` or `shadow`. Required.
    pub role: Role,
    /// How many instances (1 to 16). Default: 1.
    #[serde(default = "d_instances")]
    pub instances: u32,
    /// The instance type, which `prices` are keyed by. Default: `standard`.
    #[serde(default = "d_class")]
    pub instance_type: String,
    /// The price class, e.g. `standard` (on demand) or `spot`. Default: `standard`.
    #[serde(default = "d_class")]
    pub price_class: String,
    /// What each instance runs. Default: the example upstream, with this group's profile and
    /// the scenario's seed and clock (see [`Scenario::launch`]).
    #[serde(default)]
    pub command: Option<CommandFile>,
    /// How the group's upstreams behave over time. Default: steady, with the profile
    /// defaults.
    #[serde(default)]
    pub profile: Profile,
}

fn d_instances() -> u32 {
    1
}
fn d_class() -> String {
    "standard".to_string()
}

/// A program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandFile {
    /// The program: a path, a name looked up in `PATH`, or `{upstream}` for the example
    /// upstream. Required, non-empty.
    pub program: String,
    /// Its arguments, with placeholders (see [`Scenario::launch`]). Default: none.
    #[serde(default)]
    pub args: Vec<String>,
}

/// The load as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadFile {
    /// Requests per wall second over scenario time: straight lines between the points, flat
    /// before the first and after the last. Required, at least one point, `at_s` increasing.
    pub rate: Vec<RatePoint>,
    /// A daily cycle on top of `rate`. Default: none.
    #[serde(default)]
    pub diurnal: Option<LoadDiurnal>,
    /// How many sessions the requests are spread over (each a session key value). Default:
    /// 100.
    #[serde(default = "d_sessions")]
    pub sessions: u32,
    /// The request header that carries the session key, for sticky routing. Default:
    /// `x-session-id`.
    #[serde(default = "d_session_header")]
    pub session_header: String,
    /// The request path. Default: `/`.
    #[serde(default = "d_path")]
    pub path: String,
    /// The most requests in flight at once. Default: 64.
    #[serde(default = "d_concurrency")]
    pub concurrency: u32,
}

fn d_sessions() -> u32 {
    100
}
fn d_session_header() -> String {
    "x-session-id".to_string()
}
fn d_path() -> String {
    "/".to_string()
}
fn d_concurrency() -> u32 {
    64
}

/// One point of the request rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatePoint {
    /// Scenario seconds. Required.
    pub at_s: f64,
    /// Requests per wall second (0 to 100000). Required.
    pub rps: f64,
}

/// The rate times `1 + amplitude * cos(2π (t - peak_at_s) / period_s)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadDiurnal {
    /// Relative swing, from 0 to below 1. Required.
    pub amplitude: f64,
    /// Length of a cycle, scenario seconds. Default: 86400.
    #[serde(default = "d_day")]
    pub period_s: f64,
    /// When in the cycle the rate peaks, scenario seconds. Default: 50400 (14:00).
    #[serde(default = "d_peak")]
    pub peak_at_s: f64,
}

fn d_day() -> f64 {
    86_400.0
}
fn d_peak() -> f64 {
    50_400.0
}

/// A price from a scenario time on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    /// From when, scenario seconds; it holds until the next price of the same instance type.
    /// Required.
    pub at_s: f64,
    /// The instance type it prices. Required.
    pub instance_type: String,
    /// Price per instance-hour (0 or more). Required.
    pub per_hour: f64,
}

/// The SLO as written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloFile {
    /// p99 latency limit, milliseconds. Default: 250.
    pub p99_ms: f64,
    /// Error rate limit, a fraction of requests (above 0, below 1). Default: 0.01.
    pub error_rate: f64,
}

impl Default for SloFile {
    fn default() -> Self {
        SloFile {
            p99_ms: 250.0,
            error_rate: 0.01,
        }
    }
}

/// The cost policy as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostFile {
    /// The most the serving group may cost per hour (instances times price). Default: none
    /// (cost never triggers a migration); needs `prices`.
    #[serde(default)]
    pub budget_per_hour: Option<f64>,
}

/// The reactive baseline as written: the Flagger way, a static threshold checked every
/// interval, traffic moved to the other group after `failed_checks` failed checks in a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactiveFile {
    /// Scenario seconds between checks. Default: 60.
    #[serde(default)]
    pub check_interval_s: Option<f64>,
    /// Failed checks in a row before traffic moves. Default: 3.
    #[serde(default)]
    pub failed_checks: Option<u32>,
    /// p99 threshold, milliseconds. Default: the SLO's `p99_ms`.
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// Error rate threshold. Default: the SLO's `error_rate`.
    #[serde(default)]
    pub error_rate: Option<f64>,
}

/// A checked scenario. Serializes (as JSON for a report) with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
    /// The seed.
    pub seed: u64,
    /// Scenario seconds per wall second.
    pub time_scale: f64,
    /// Scenario time at the start, seconds.
    pub start_s: f64,
    /// Run length, scenario seconds.
    pub duration_s: f64,
    /// Phases, in time order; the first starts at or before `start_s`.
    pub phases: Vec<Phase>,
    /// The service's name.
    pub service: String,
    /// The primary group.
    pub primary: Group,
    /// The shadow group.
    pub shadow: Group,
    /// The load.
    pub load: Load,
    /// Prices, in file order; see [`Scenario::price_at`].
    pub prices: Vec<PriceFile>,
    /// The SLO.
    pub slo: Slo,
    /// The serving group's cost budget per hour, if any.
    pub budget_per_hour: Option<f64>,
    /// The reactive baseline.
    pub reactive: Reactive,
}

/// A checked phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// When it starts, scenario seconds.
    pub at_s: f64,
    /// Its name.
    pub name: String,
}

/// A checked group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// Name (Envoy cluster).
    pub name: String,
    /// Role at the start.
    pub role: Role,
    /// Instance count.
    pub instances: u32,
    /// Instance type.
    pub instance_type: String,
    /// Price class.
    pub price_class: String,
    /// The command as written; `None` runs the example upstream (see [`Scenario::launch`]).
    pub command: Option<CommandFile>,
    /// Its profile.
    pub profile: ValidProfile,
    /// Its seed: the scenario's mixed with the group's place in the file, so two groups of
    /// one scenario wander differently.
    pub seed: u64,
}

/// A checked load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Load {
    /// Rate points, `at_s` increasing.
    pub rate: Vec<RatePoint>,
    /// The daily cycle, if any.
    pub diurnal: Option<LoadDiurnal>,
    /// Sessions.
    pub sessions: u32,
    /// Session key header, lower case.
    pub session_header: String,
    /// Request path.
    pub path: String,
    /// Most requests in flight.
    pub concurrency: u32,
    /// The load generator's seed (derived from the scenario's).
    pub seed: u64,
}

/// A checked SLO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Slo {
    /// p99 limit, milliseconds.
    pub p99_ms: f64,
    /// Error rate limit.
    pub error_rate: f64,
}

/// A checked reactive baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reactive {
    /// Scenario seconds between checks.
    pub check_interval_s: f64,
    /// Failed checks in a row before traffic moves.
    pub failed_checks: u32,
    /// p99 threshold, milliseconds.
    pub p99_ms: f64,
    /// Error rate threshold.
    pub error_rate: f64,
}

/// What [`Scenario::launch`] needs from the driver.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchContext {
    /// The built `example-upstream` binary.
    pub upstream: PathBuf,
    /// The wall instant (Unix milliseconds) that is scenario time `start_s`, shared by every
    /// instance so their clocks agree (and a restarted instance rejoins the same time).
    pub epoch_unix_ms: u64,
    /// Start the upstreams with their whole profile (`true`), or only with the effects that
    /// start by `start_s`, the rest to be injected through [`Scenario::injections`].
    pub whole_profile: bool,
}

/// A program and its arguments, ready to run (the provisioner still replaces `{port}`,
/// `{group}` and `{instance}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// An effect to add to a running group at a scenario time, through
/// `POST /_control/effects` on each of its instances.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// When, scenario seconds (the effect's own `at_s`).
    pub at_s: f64,
    /// The group's name.
    pub group: String,
    /// The effect, as JSON for the request body.
    pub effect_json: String,
    /// The effect.
    pub effect: Effect,
}

/// Reads and checks a scenario file. Errors name `FILE:LINE:COLUMN` and the field.
pub fn load(path: &Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut s = parse(&text, &path.display().to_string())?;
    s.path = Some(path.to_path_buf());
    Ok(s)
}

/// Every `*.yaml` scenario in `dir`, checked, sorted by name; the first bad one is the error.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for path in yaml_files(dir)? {
        out.push(load(&path)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The scenario named `name` in `dir` (`dir/NAME.yaml`); the error lists the names there.
pub fn find(dir: &Path, name: &str) -> Result<Scenario> {
    let path = dir.join(format!("{name}.yaml"));
    if path.is_file() {
        return load(&path);
    }
    let names: Vec<String> = yaml_files(dir)?
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    Err(Error::Invalid {
        place: dir.display().to_string(),
        field: "scenario".to_string(),
        message: format!(
            "no scenario named \"{name}\"; there are: {}",
            names.join(", ")
        ),
    })
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Parses and checks a scenario's text; errors start with `origin` (a file name), whose stem
/// is the default name.
pub fn parse(text: &str, origin: &str) -> Result<Scenario> {
    let file: ScenarioFile =
        serde_yaml_ng::from_str(text).map_err(|e| crate::yaml_error(origin, e))?;
    let default_name = Path::new(origin)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".to_string());
    file.check(&default_name)
        .map_err(|e| e.place(origin, Some(text)))
}

/// Letters, digits, `-`, `_`, `.`; 1 to 64 of them (the control plane's rule for names).
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn ensure(ok: bool, field: &str, message: impl FnOnce() -> String) -> Result<(), FieldError> {
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, message()))
    }
}

fn finite_time(field: &str, v: f64) -> Result<(), FieldError> {
    ensure(v.is_finite() && v >= 0.0, field, || {
        format!("must be a time of 0 or later, got {v}")
    })
}

fn positive(field: &str, v: f64) -> Result<(), FieldError> {
    ensure(v.is_finite() && v > 0.0, field, || {
        format!("must be positive, got {v}")
    })
}

impl ScenarioFile {
    /// Validates the file into a [`Scenario`], naming the first bad field.
    fn check(self, default_name: &str) -> Result<Scenario, FieldError> {
        let name = self.name.unwrap_or_else(|| default_name.to_string());
        ensure(is_name(&name), "name", || {
            format!("\"{name}\" is not a valid name (letters, digits, - _ ., at most 64)")
        })?;
        ensure(
            self.time_scale.is_finite() && self.time_scale > 0.0 && self.time_scale <= 100_000.0,
            "time_scale",
            || {
                format!(
                    "must be above 0 and at most 100000, got {}",
                    self.time_scale
                )
            },
        )?;
        finite_time("start_s", self.start_s)?;
        positive("duration_s", self.duration_s)?;
        let end_s = self.start_s + self.duration_s;

        let phases = if self.phases.is_empty() {
            vec![Phase {
                at_s: self.start_s,
                name: "run".to_string(),
            }]
        } else {
            let mut out: Vec<Phase> = Vec::new();
            for (i, p) in self.phases.into_iter().enumerate() {
                let field = format!("phases[{i}]");
                finite_time(&format!("{field}.at_s"), p.at_s)?;
                ensure(!p.name.trim().is_empty(), &format!("{field}.name"), || {
                    "must not be empty".to_string()
                })?;
                if let Some(prev) = out.last() {
                    ensure(p.at_s > prev.at_s, &format!("{field}.at_s"), || {
                        format!("must be later than the phase before ({})", prev.at_s)
                    })?;
                } else {
                    ensure(p.at_s <= self.start_s, &format!("{field}.at_s"), || {
                        format!("the first phase must start by start_s ({})", self.start_s)
                    })?;
                }
                ensure(p.at_s < end_s, &format!("{field}.at_s"), || {
                    format!("is after the run ends ({end_s})")
                })?;
                out.push(Phase {
                    at_s: p.at_s,
                    name: p.name,
                });
            }
            out
        };

        ensure(is_name(&self.service), "service", || {
            format!(
                "\"{}\" is not a valid name (letters, digits, - _ .)",
                self.service
            )
        })?;

        let mut primary = None;
        let mut shadow = None;
        let mut names = BTreeSet::new();
        for (i, g) in self.groups.into_iter().enumerate() {
            let field = format!("groups[{i}]");
            let group = check_group(g, self.seed, i).map_err(|e| e.under(&field))?;
            ensure(
                names.insert(group.name.clone()),
                &format!("{field}.name"),
                || format!("another group is named \"{}\"", group.name),
            )?;
            let slot = match group.role {
                Role::Primary => &mut primary,
                Role::Shadow => &mut shadow,
            };
            ensure(slot.is_none(), &format!("{field}.role"), || {
                format!(
                    "a second {} group; a scenario has one of each",
                    group.role.as_str()
                )
            })?;
            *slot = Some((i, group));
        }
        let ((primary_at, primary), (shadow_at, shadow)) = match (primary, shadow) {
            (Some(p), Some(s)) => (p, s),
            (None, _) => return Err(FieldError::new("groups", "no primary group")),
            (_, None) => return Err(FieldError::new("groups", "no shadow group")),
        };

        let load = check_load(self.load, self.seed).map_err(|e| e.under("load"))?;

        let mut last_price: BTreeMap<&str, f64> = BTreeMap::new();
        for (i, p) in self.prices.iter().enumerate() {
            let field = format!("prices[{i}]");
            finite_time(&format!("{field}.at_s"), p.at_s)?;
            ensure(
                is_name(&p.instance_type),
                &format!("{field}.instance_type"),
                || format!("\"{}\" is not a valid instance type", p.instance_type),
            )?;
            ensure(
                p.per_hour.is_finite() && p.per_hour >= 0.0,
                &format!("{field}.per_hour"),
                || format!("must be 0 or more, got {}", p.per_hour),
            )?;
            if let Some(prev) = last_price.insert(&p.instance_type, p.at_s) {
                ensure(p.at_s > prev, &format!("{field}.at_s"), || {
                    format!(
                        "must be later than the price before for {} ({prev})",
                        p.instance_type
                    )
                })?;
            }
        }
        if !self.prices.is_empty() {
            for (i, g) in [(primary_at, &primary), (shadow_at, &shadow)] {
                let priced = self
                    .prices
                    .iter()
                    .any(|p| p.instance_type == g.instance_type && p.at_s <= self.start_s);
                // At the group's instance_type if written, else (the default) at the group.
                ensure(priced, &format!("groups[{i}].instance_type"), || {
                    format!(
                        "no price for instance type \"{}\" at start_s ({}) in `prices`",
                        g.instance_type, self.start_s
                    )
                })?;
            }
        }

        positive("slo.p99_ms", self.slo.p99_ms)?;
        ensure(
            self.slo.error_rate.is_finite()
                && self.slo.error_rate > 0.0
                && self.slo.error_rate < 1.0,
            "slo.error_rate",
            || format!("must be above 0 and below 1, got {}", self.slo.error_rate),
        )?;
        if let Some(b) = self.cost.budget_per_hour {
            positive("cost.budget_per_hour", b)?;
            ensure(!self.prices.is_empty(), "cost.budget_per_hour", || {
                "a budget needs prices".to_string()
            })?;
        }

        let r = self.reactive;
        let reactive = Reactive {
            check_interval_s: r.check_interval_s.unwrap_or(60.0),
            failed_checks: r.failed_checks.unwrap_or(3),
            p99_ms: r.p99_ms.unwrap_or(self.slo.p99_ms),
            error_rate: r.error_rate.unwrap_or(self.slo.error_rate),
        };
        positive("reactive.check_interval_s", reactive.check_interval_s)?;
        ensure(
            reactive.failed_checks >= 1,
            "reactive.failed_checks",
            || "must be at least 1".to_string(),
        )?;
        positive("reactive.p99_ms", reactive.p99_ms)?;
        ensure(
            reactive.error_rate.is_finite()
                && reactive.error_rate > 0.0
                && reactive.error_rate < 1.0,
            "reactive.error_rate",
            || format!("must be above 0 and below 1, got {}", reactive.error_rate),
        )?;

        Ok(Scenario {
            name,
            description: self.description.trim().to_string(),
            path: None,
            seed: self.seed,
            time_scale: self.time_scale,
            start_s: self.start_s,
            duration_s: self.duration_s,
            phases,
            service: self.service,
            primary,
            shadow,
            load,
            prices: self.prices,
            slo: Slo {
                p99_ms: self.slo.p99_ms,
                error_rate: self.slo.error_rate,
            },
            budget_per_hour: self.cost.budget_per_hour,
            reactive,
        })
    }
}

fn check_group(g: GroupFile, seed: u64, index: usize) -> Result<Group, FieldError> {
    ensure(is_name(&g.name), "name", || {
        format!(
            "\"{}\" is not a valid group name (letters, digits, - _ ., at most 64)",
            g.name
        )
    })?;
    ensure((1..=16).contains(&g.instances), "instances", || {
        format!("must be from 1 to 16, got {}", g.instances)
    })?;
    ensure(is_name(&g.instance_type), "instance_type", || {
        format!(
            "\"{}\" is not a valid class name (letters, digits, - _ .)",
            g.instance_type
        )
    })?;
    ensure(is_name(&g.price_class), "price_class", || {
        format!(
            "\"{}\" is not a valid class name (letters, digits, - _ .)",
            g.price_class
        )
    })?;
    if let Some(c) = &g.command {
        ensure(!c.program.trim().is_empty(), "command.program", || {
            "must not be empty".to_string()
        })?;
        ensure(
            !c.program.contains('\0') && c.args.iter().all(|a| !a.contains('\0')),
            "command",
            || "contains a NUL byte".to_string(),
        )?;
    }
    let profile = ValidProfile::checked(g.profile).map_err(|e| e.under("profile"))?;
    Ok(Group {
        name: g.name,
        role: g.role,
        instances: g.instances,
        instance_type: g.instance_type,
        price_class: g.price_class,
        command: g.command,
        profile,
        seed: profile::mix(seed, index as u64 + 1),
    })
}

fn check_load(l: LoadFile, seed: u64) -> Result<Load, FieldError> {
    ensure(!l.rate.is_empty(), "rate", || {
        "needs at least one point".to_string()
    })?;
    for (i, p) in l.rate.iter().enumerate() {
        let field = format!("rate[{i}]");
        finite_time(&format!("{field}.at_s"), p.at_s)?;
        ensure(
            p.rps.is_finite() && (0.0..=100_000.0).contains(&p.rps),
            &format!("{field}.rps"),
            || format!("must be from 0 to 100000, got {}", p.rps),
        )?;
        if i > 0 {
            let prev = l.rate[i - 1].at_s;
            ensure(p.at_s > prev, &format!("{field}.at_s"), || {
                format!("must be later than the point before ({prev})")
            })?;
        }
    }
    ensure(l.rate.iter().any(|p| p.rps > 0.0), "rate", || {
        "every point is 0 requests per second".to_string()
    })?;
    if let Some(d) = &l.diurnal {
        ensure(
            d.amplitude.is_finite() && (0.0..1.0).contains(&d.amplitude),
            "diurnal.amplitude",
            || format!("must be from 0 to below 1, got {}", d.amplitude),
        )?;
        positive("diurnal.period_s", d.period_s)?;
        ensure(d.peak_at_s.is_finite(), "diurnal.peak_at_s", || {
            format!("must be a time, got {}", d.peak_at_s)
        })?;
    }
    ensure(l.sessions >= 1, "sessions", || {
        "must be at least 1".to_string()
    })?;
    ensure(
        !l.session_header.is_empty()
            && l.session_header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_')),
        "session_header",
        || {
            format!(
                "\"{}\" is not a lower-case header name (a-z, 0-9, - _)",
                l.session_header
            )
        },
    )?;
    ensure(
        l.path.starts_with('/') && !l.path.contains(char::is_whitespace),
        "path",
        || format!("\"{}\" must start with / and have no spaces", l.path),
    )?;
    ensure((1..=1024).contains(&l.concurrency), "concurrency", || {
        format!("must be from 1 to 1024, got {}", l.concurrency)
    })?;
    Ok(Load {
        rate: l.rate,
        diurnal: l.diurnal,
        sessions: l.sessions,
        session_header: l.session_header,
        path: l.path,
        concurrency: l.concurrency,
        seed: profile::mix(seed, 0),
    })
}

impl Load {
    /// Requests per wall second at scenario time `t_s`.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        let base = match self.rate.iter().position(|p| p.at_s > t_s) {
            Some(0) => self.rate[0].rps,
            None => self.rate.last().map_or(0.0, |p| p.rps),
            Some(i) => {
                let (a, b) = (self.rate[i - 1], self.rate[i]);
                a.rps + (b.rps - a.rps) * (t_s - a.at_s) / (b.at_s - a.at_s)
            }
        };
        match &self.diurnal {
            Some(d) => {
                base * (1.0
                    + d.amplitude
                        * (2.0 * std::f64::consts::PI * (t_s - d.peak_at_s) / d.period_s).cos())
            }
            None => base,
        }
    }
}

impl Scenario {
    /// When the run ends, scenario seconds.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.duration_s
    }

    /// How long the run takes on the wall clock.
    pub fn wall_duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s / self.time_scale)
    }

    /// The scenario time `elapsed` wall time after the start.
    pub fn scenario_time(&self, elapsed: Duration) -> f64 {
        self.start_s + elapsed.as_secs_f64() * self.time_scale
    }

    /// The wall time after the start at which scenario time `t_s` comes (zero for times
    /// before the start).
    pub fn wall_offset(&self, t_s: f64) -> Duration {
        Duration::from_secs_f64(((t_s - self.start_s) / self.time_scale).max(0.0))
    }

    /// The groups, primary first.
    pub fn groups(&self) -> [&Group; 2] {
        [&self.primary, &self.shadow]
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups().into_iter().find(|g| g.name == name)
    }

    /// The name of the phase at scenario time `t_s`.
    pub fn phase_at(&self, t_s: f64) -> &str {
        self.phases
            .iter()
            .rev()
            .find(|p| p.at_s <= t_s)
            .or(self.phases.first())
            .map_or("run", |p| p.name.as_str())
    }

    /// Requests per wall second at `t_s`.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        self.load.rate_at(t_s)
    }

    /// The price per instance-hour of `instance_type` at `t_s`: the latest price at or before
    /// it; `None` when there is none.
    pub fn price_at(&self, instance_type: &str, t_s: f64) -> Option<f64> {
        self.prices
            .iter()
            .filter(|p| p.instance_type == instance_type && p.at_s <= t_s)
            .max_by(|a, b| a.at_s.total_cmp(&b.at_s))
            .map(|p| p.per_hour)
    }

    /// Every instance type's price at `t_s`: the control plane's price table then.
    pub fn prices_at(&self, t_s: f64) -> BTreeMap<String, f64> {
        let types: BTreeSet<&str> = self
            .prices
            .iter()
            .map(|p| p.instance_type.as_str())
            .collect();
        types
            .into_iter()
            .filter_map(|t| self.price_at(t, t_s).map(|p| (t.to_string(), p)))
            .collect()
    }

    /// What `group` costs per hour at `t_s` (instances times price); `None` without prices.
    pub fn cost_per_hour(&self, group: &Group, t_s: f64) -> Option<f64> {
        self.price_at(&group.instance_type, t_s)
            .map(|p| p * group.instances as f64)
    }

    /// The profile's parameters of `group` at `t_s` (with the group's seed).
    pub fn params_at(&self, group: &Group, t_s: f64) -> Params {
        group.profile.params_at(t_s, group.seed)
    }

    /// When the primary's first fault starts, scenario seconds, if one starts during the run.
    pub fn fault_onset_s(&self) -> Option<f64> {
        self.primary
            .profile
            .fault_onset_s()
            .filter(|t| *t < self.end_s())
    }

    /// When the primary's price first rises during the run, scenario seconds.
    pub fn price_rise_s(&self) -> Option<f64> {
        let ty = &self.primary.instance_type;
        let mut changes: Vec<&PriceFile> = self
            .prices
            .iter()
            .filter(|p| &p.instance_type == ty && p.at_s > self.start_s && p.at_s < self.end_s())
            .collect();
        changes.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        changes
            .into_iter()
            .find(|p| {
                self.price_at(ty, p.at_s - 1e-9)
                    .is_some_and(|before| p.per_hour > before)
            })
            .map(|p| p.at_s)
    }

    /// When the trouble starts: the primary's first fault, else its first price rise; what
    /// the bench measures the time to cutover from. `None` for the no-fault scenarios.
    pub fn onset_s(&self) -> Option<f64> {
        self.fault_onset_s().or_else(|| self.price_rise_s())
    }

    /// The first scenario time in the run at which `group`, serving alone, breaks the SLO
    /// by its profile: the p99 above `slo.p99_ms` or the error rate above `slo.error_rate`.
    /// Looked for on a grid of at most 20000 steps (at least one scenario second).
    pub fn slo_breach_s(&self, group: &Group) -> Option<f64> {
        self.first_time(|t| {
            let p = self.params_at(group, t);
            p.latency_quantile_ms(0.99) > self.slo.p99_ms || p.error_rate > self.slo.error_rate
        })
    }

    /// The first scenario time in the run at which `group`, serving alone, costs more than
    /// the budget per hour; `None` without a budget.
    pub fn budget_breach_s(&self, group: &Group) -> Option<f64> {
        let budget = self.budget_per_hour?;
        self.first_time(|t| self.cost_per_hour(group, t).is_some_and(|c| c > budget))
    }

    /// Whether a good policy should migrate in this run: the primary breaks the SLO or the
    /// budget before the end. The no-fault scenarios answer `false`.
    pub fn expects_migration(&self) -> bool {
        self.slo_breach_s(&self.primary).is_some() || self.budget_breach_s(&self.primary).is_some()
    }

    fn first_time(&self, breached: impl Fn(f64) -> bool) -> Option<f64> {
        let step = (self.duration_s / 20_000.0).max(1.0);
        let steps = (self.duration_s / step).ceil() as u64;
        (0..=steps)
            .map(|i| (self.start_s + i as f64 * step).min(self.end_s()))
            .find(|t| breached(*t))
    }

    /// The profile `group`'s instances start with: the whole profile, or with
    /// `whole_profile == false` only the effects that start by `start_s`.
    pub fn start_profile(&self, group: &Group, whole_profile: bool) -> ValidProfile {
        if whole_profile {
            group.profile.clone()
        } else {
            group.profile.until(self.start_s)
        }
    }

    /// The example upstream's arguments for `group`: its profile as JSON, its seed and the
    /// scenario clock. Port, name and instance come from the provisioner's `$PORT`,
    /// `$SHADOWPLANE_GROUP` and `$SHADOWPLANE_INSTANCE`.
    pub fn upstream_args(&self, group: &Group, ctx: &LaunchContext) -> Vec<String> {
        vec![
            "--profile-json".to_string(),
            self.start_profile(group, ctx.whole_profile).to_json(),
            "--seed".to_string(),
            group.seed.to_string(),
            "--time-scale".to_string(),
            self.time_scale.to_string(),
            "--start-s".to_string(),
            self.start_s.to_string(),
            "--epoch-unix-ms".to_string(),
            ctx.epoch_unix_ms.to_string(),
        ]
    }

    /// The command each instance of `group` runs. Without a `command` in the file, the
    /// example upstream with [`Scenario::upstream_args`]. With one, its program and
    /// arguments with these placeholders replaced: `{upstream}` (the example upstream's
    /// path), `{upstream_args}` (as a whole argument: all of `upstream_args`),
    /// `{profile_json}`, `{seed}`, `{time_scale}`, `{start_s}`, `{epoch_unix_ms}`. The local
    /// provisioner replaces `{port}`, `{group}` and `{instance}` after.
    pub fn launch(&self, group: &Group, ctx: &LaunchContext) -> Launch {
        let upstream = ctx.upstream.display().to_string();
        let Some(c) = &group.command else {
            return Launch {
                program: upstream,
                args: self.upstream_args(group, ctx),
            };
        };
        let profile_json = self.start_profile(group, ctx.whole_profile).to_json();
        let expand = |s: &str| {
            s.replace(UPSTREAM_PLACEHOLDER, &upstream)
                .replace("{profile_json}", &profile_json)
                .replace("{seed}", &group.seed.to_string())
                .replace("{time_scale}", &self.time_scale.to_string())
                .replace("{start_s}", &self.start_s.to_string())
                .replace("{epoch_unix_ms}", &ctx.epoch_unix_ms.to_string())
        };
        let mut args = Vec::new();
        for a in &c.args {
            if a == "{upstream_args}" {
                args.extend(self.upstream_args(group, ctx));
            } else {
                args.push(expand(a));
            }
        }
        Launch {
            program: expand(&c.program),
            args,
        }
    }

    /// The effects to inject after the start when the upstreams were started without their
    /// whole profile (`whole_profile == false`), earliest first, over both groups.
    pub fn injections(&self) -> Vec<Injection> {
        let mut out: Vec<Injection> = self
            .groups()
            .into_iter()
            .flat_map(|g| {
                g.profile
                    .effects_after(self.start_s)
                    .into_iter()
                    .map(|effect| Injection {
                        at_s: effect.at_s(),
                        group: g.name.clone(),
                        // An effect is plain numbers and strings: serializing cannot fail.
                        effect_json: serde_json::to_string(&effect).unwrap_or_default(),
                        effect,
                    })
            })
            .collect();
        out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        out
    }
}

/// One request of the load, planned: when to send it and in which session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedRequest {
    /// Wall time after the start at which to send it.
    pub wall_offset: Duration,
    /// Its scenario time.
    pub scenario_s: f64,
    /// Its session, from 0 to `load.sessions - 1`; [`Load::session_key`] names it.
    pub session: u32,
}

/// The load's requests in time order: Poisson arrivals at the scenario's rate, each in a
/// session drawn uniformly, reproducible from the scenario's seed. Made by
/// [`Scenario::requests`]; ends at the end of the run.
#[derive(Debug, Clone)]
pub struct RequestPlan<'a> {
    scenario: &'a Scenario,
    rng: fastrand::Rng,
    wall_s: f64,
}

impl Iterator for RequestPlan<'_> {
    type Item = PlannedRequest;

    fn next(&mut self) -> Option<PlannedRequest> {
        let s = self.scenario;
        let end_wall = s.duration_s / s.time_scale;
        loop {
            let rate = s.rate_at(s.start_s + self.wall_s * s.time_scale);
            if rate <= 0.0 {
                // Idle: look again a little later; the rate only changes smoothly.
                self.wall_s += 0.1;
            } else {
                // 1 - u keeps the logarithm's argument in (0, 1].
                self.wall_s += -(1.0 - self.rng.f64()).ln() / rate;
            }
            if self.wall_s >= end_wall {
                return None;
            }
            if rate > 0.0 {
                return Some(PlannedRequest {
                    wall_offset: Duration::from_secs_f64(self.wall_s),
                    scenario_s: s.start_s + self.wall_s * s.time_scale,
                    session: self.rng.u32(0..s.load.sessions),
                });
            }
        }
    }
}

impl Load {
    /// The value of the session header for session `n`: `s-N`.
    pub fn session_key(&self, n: u32) -> String {
        format!("s-{n}")
    }
}

impl Scenario {
    /// Every request of the run, planned: what a load generator sends, and when.
    pub fn requests(&self) -> RequestPlan<'_> {
        RequestPlan {
            scenario: self,
            rng: fastrand::Rng::with_seed(self.load.seed),
            wall_s: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
duration_s: 600
groups:
  - {name: blue, role: primary}
  - {name: green, role: shadow}
load:
  rate: [{at_s: 0, rps: 10}]
";

    fn scenario(text: &str) -> Scenario {
        parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> String {
        parse(text, "t.yaml").unwrap_err().to_string()
    }

    #[test]
    fn every_shipped_scenario_loads_and_the_required_ones_are_there() {
        let all = load_dir(&shipped_dir()).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        for want in [
            "creeping-degradation",
            "step-failure",
            "memory-leak",
            "cpu-contention",
            "price-rise",
            "diurnal-noise",
            "noisy-steady",
        ] {
            assert!(names.contains(&want), "no {want} in {names:?}");
        }
        for s in &all {
            let file = s
                .path
                .as_ref()
                .and_then(|p| p.file_stem())
                .map(|n| n.to_string_lossy());
            assert_eq!(
                file.as_deref(),
                Some(s.name.as_str()),
                "file named after its scenario"
            );
            assert!(!s.description.is_empty(), "{}: no description", s.name);
        }
    }

    #[test]
    fn fault_scenarios_breach_after_the_fault_and_the_others_never() {
        for s in load_dir(&shipped_dir()).unwrap() {
            let shadow = s.slo_breach_s(&s.shadow);
            assert_eq!(
                shadow, None,
                "{}: the shadow breaks the SLO at {shadow:?}",
                s.name
            );
            assert_eq!(
                s.budget_breach_s(&s.shadow),
                None,
                "{}: the shadow is over budget",
                s.name
            );
            let breach = s.slo_breach_s(&s.primary);
            let over = s.budget_breach_s(&s.primary);
            match s.name.as_str() {
                "diurnal-noise" | "noisy-steady" => {
                    assert!(!s.expects_migration(), "{}: {breach:?} {over:?}", s.name);
                    assert_eq!(s.onset_s(), None, "{}", s.name);
                }
                "price-rise" => {
                    let over = over.unwrap_or_else(|| panic!("price-rise is never over budget"));
                    assert!(
                        over > s.start_s + s.duration_s * 0.2,
                        "over budget at once: {over}"
                    );
                    assert_eq!(breach, None);
                    assert_eq!((s.fault_onset_s(), s.price_rise_s()), (None, Some(1200.0)));
                    assert_eq!(s.onset_s(), Some(1200.0));
                }
                _ => {
                    assert_eq!(s.onset_s(), s.fault_onset_s());
                    let onset = s
                        .fault_onset_s()
                        .unwrap_or_else(|| panic!("{}: no fault", s.name));
                    let breach = breach.unwrap_or_else(|| panic!("{}: never breaches", s.name));
                    assert!(
                        onset > s.start_s,
                        "{}: the fault is there from the start",
                        s.name
                    );
                    assert!(
                        breach >= onset,
                        "{}: breach {breach} before onset {onset}",
                        s.name
                    );
                    assert!(
                        breach < s.end_s() - s.duration_s * 0.1,
                        "{}: breach {breach} leaves no time to see it",
                        s.name
                    );
                    eprintln!(
                        "{}: fault at {onset} s, SLO breached at {breach} s ({:.0} s wall later)",
                        s.name,
                        (breach - onset) / s.time_scale
                    );
                }
            }
        }
    }

    #[test]
    fn the_demo_scenario_runs_in_about_three_minutes() {
        let s = find(&shipped_dir(), "creeping-degradation").unwrap();
        let wall = s.wall_duration().as_secs();
        assert!((150..=240).contains(&wall), "{wall} s");
    }

    #[test]
    fn defaults_fill_in_a_minimal_scenario() {
        let s = scenario(MINIMAL);
        assert_eq!(s.name, "t");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["primary"]["profile"]["base"]["latency_median_ms"],
            20.0
        );
        assert_eq!(json["load"]["session_header"], "x-session-id");
        assert_eq!(json["reactive"]["failed_checks"], 3);
        assert_eq!(
            (s.seed, s.time_scale, s.start_s, s.end_s()),
            (1, 1.0, 0.0, 600.0)
        );
        assert_eq!(s.phase_at(300.0), "run");
        assert_eq!(s.service, "demo");
        assert_eq!(s.primary.name, "blue");
        assert_eq!(s.shadow.role, Role::Shadow);
        assert_eq!(s.primary.instances, 1);
        assert_eq!(s.primary.instance_type, "standard");
        assert_eq!(s.primary.profile, ValidProfile::steady());
        assert_ne!(s.primary.seed, s.shadow.seed);
        assert_eq!(s.load.sessions, 100);
        assert_eq!(s.load.session_header, "x-session-id");
        assert_eq!(
            s.slo,
            Slo {
                p99_ms: 250.0,
                error_rate: 0.01
            }
        );
        assert_eq!(s.reactive.failed_checks, 3);
        assert_eq!(s.reactive.p99_ms, 250.0);
        assert_eq!(s.budget_per_hour, None);
        assert_eq!(s.cost_per_hour(&s.primary, 0.0), None);
        assert!(!s.expects_migration());
    }

    #[test]
    fn clock_phases_rate_and_prices_follow_the_file() {
        let s = scenario(
            "duration_s: 3600\ntime_scale: 60\nstart_s: 100\n\
             phases: [{at_s: 0, name: warm}, {at_s: 1000, name: hot}]\n\
             groups:\n  - {name: blue, role: primary, instances: 2, instance_type: big}\n  \
             - {name: green, role: shadow, instance_type: small}\n\
             load:\n  rate: [{at_s: 0, rps: 10}, {at_s: 1000, rps: 30}]\n\
             prices:\n  - {at_s: 0, instance_type: big, per_hour: 1}\n  \
             - {at_s: 0, instance_type: small, per_hour: 0.5}\n  \
             - {at_s: 2000, instance_type: big, per_hour: 3}\n\
             cost: {budget_per_hour: 4}\n",
        );
        assert_eq!(s.wall_duration(), Duration::from_secs(60));
        assert_eq!(s.scenario_time(Duration::from_secs(2)), 220.0);
        assert_eq!(s.wall_offset(700.0), Duration::from_secs(10));
        assert_eq!((s.phase_at(100.0), s.phase_at(1000.0)), ("warm", "hot"));
        assert_eq!(s.rate_at(500.0), 20.0);
        assert_eq!(s.rate_at(5000.0), 30.0);
        assert_eq!(s.price_at("big", 1999.0), Some(1.0));
        assert_eq!(s.cost_per_hour(&s.primary, 2000.0), Some(6.0));
        assert_eq!(s.prices_at(2500.0).get("small"), Some(&0.5));
        assert_eq!(s.budget_breach_s(&s.primary), Some(2000.0));
        assert_eq!(s.budget_breach_s(&s.shadow), None);
        assert!(s.expects_migration());
    }

    #[test]
    fn launch_builds_the_upstream_command_and_injections() {
        let s = scenario(
            "duration_s: 600\nseed: 9\ntime_scale: 10\n\
             groups:\n  - name: blue\n    role: primary\n    profile:\n      effects:\n        \
             - {kind: noise}\n        - {kind: step_failure, at_s: 300, error_rate: 0.5}\n  \
             - name: green\n    role: shadow\n    command: {program: /bin/env, args: [\"{upstream}\", \
             \"{upstream_args}\", --port, \"{port}\", \"--x={seed}\"]}\n\
             load: {rate: [{at_s: 0, rps: 10}]}\n",
        );
        let ctx = LaunchContext {
            upstream: PathBuf::from("/t/example-upstream"),
            epoch_unix_ms: 1234,
            whole_profile: true,
        };
        let l = s.launch(&s.primary, &ctx);
        assert_eq!(l.program, "/t/example-upstream");
        assert_eq!(l.args[0], "--profile-json");
        let p = profile::parse_json(&l.args[1], "arg").unwrap();
        assert_eq!(p, s.primary.profile);
        assert_eq!(
            &l.args[2..],
            [
                "--seed",
                &s.primary.seed.to_string(),
                "--time-scale",
                "10",
                "--start-s",
                "0",
                "--epoch-unix-ms",
                "1234"
            ]
        );
        let g = s.launch(&s.shadow, &ctx);
        assert_eq!(g.program, "/bin/env");
        assert_eq!(g.args[0], "/t/example-upstream");
        assert_eq!(g.args.len(), 1 + 10 + 3);
        assert_eq!(
            &g.args[11..],
            ["--port", "{port}", &format!("--x={}", s.shadow.seed)]
        );

        let later = LaunchContext {
            whole_profile: false,
            ..ctx
        };
        let l = s.launch(&s.primary, &later);
        let p = profile::parse_json(&l.args[1], "arg").unwrap();
        assert_eq!(p.active_at(400.0), vec!["noise"]);
        let inj = s.injections();
        assert_eq!(inj.len(), 1);
        assert_eq!((inj[0].at_s, inj[0].group.as_str()), (300.0, "blue"));
        let e = profile::parse_effect_json(&inj[0].effect_json, "body").unwrap();
        assert_eq!(p.with_effect(e).unwrap(), s.primary.profile);
    }

    #[test]
    fn malformed_scenarios_name_the_place() {
        let cases = [
            (
                MINIMAL.replace("duration_s: 600", "duration_s: 600\ncolour: red"),
                "t.yaml:2:1: unknown field `colour`",
            ),
            (
                MINIMAL.replace("{name: green, role: shadow}", "{name: green, role: shadow, instances: 0}"),
                "t.yaml:4:33: groups[1].instances: must be from 1 to 16, got 0",
            ),
            (
                MINIMAL.replace("role: shadow", "role: primary"),
                "t.yaml:4:19: groups[1].role: a second primary group; a scenario has one of each",
            ),
            (
                MINIMAL.replace("name: green", "name: blue"),
                "t.yaml:4:6: groups[1].name: another group is named \"blue\"",
            ),
            (
                MINIMAL.replace(
                    "{name: blue, role: primary}",
                    "{name: blue, role: primary, profile: {effects: [{kind: step_failure, at_s: 5, error_rate: 2}]}}",
                ),
                "t.yaml:3:83: groups[0].profile.effects[0].error_rate: must be from 0 to 1, got 2",
            ),
            (
                MINIMAL.replace("rps: 10", "rps: -1"),
                "t.yaml:6:20: load.rate[0].rps: must be from 0 to 100000, got -1",
            ),
            (
                format!("{MINIMAL}cost: {{budget_per_hour: 2}}\n"),
                "t.yaml:7:8: cost.budget_per_hour: a budget needs prices",
            ),
            (
                format!("{MINIMAL}phases: [{{at_s: 10, name: late}}]\n"),
                "t.yaml:7:11: phases[0].at_s: the first phase must start by start_s (0)",
            ),
            (
                format!("{MINIMAL}prices: [{{at_s: 0, instance_type: big, per_hour: 1}}]\n"),
                "t.yaml:3:6: groups[0].instance_type: no price for instance type \"standard\" at \
                 start_s (0) in `prices`",
            ),
            (
                MINIMAL.replace("  - {name: green, role: shadow}\n", ""),
                "t.yaml:2:1: groups: no shadow group",
            ),
        ];
        for (text, want) in cases {
            let got = error(&text);
            assert!(
                got.starts_with(want),
                "got\n  {got}\nwant\n  {want}\nfor\n{text}"
            );
        }
        let e = error("duration_s: 1\n");
        assert!(e.starts_with("t.yaml:1:1: missing field `groups`"), "{e}");
        let e = parse(MINIMAL, "t.yaml")
            .map(|_| ())
            .and_then(|_| load(Path::new("/nonexistent/s.yaml")).map(|_| ()));
        assert!(
            e.unwrap_err()
                .to_string()
                .starts_with("/nonexistent/s.yaml: cannot read: ")
        );
        let e = find(&shipped_dir(), "no-such").unwrap_err().to_string();
        assert!(
            e.contains("no scenario named \"no-such\"; there are: ") && e.contains("step-failure"),
            "{e}"
        );
    }

    #[test]
    fn the_request_plan_follows_the_rate_and_is_reproducible() {
        let s = find(&shipped_dir(), "creeping-degradation").unwrap();
        let plan: Vec<PlannedRequest> = s.requests().collect();
        // 100 per second for 180 s: 18000, give or take a few standard deviations (134).
        assert!(
            (17_500..18_500).contains(&plan.len()),
            "{} requests",
            plan.len()
        );
        assert!(
            plan.windows(2)
                .all(|w| w[1].wall_offset >= w[0].wall_offset)
        );
        assert!(plan.iter().all(|r| r.session < s.load.sessions));
        let sessions: BTreeSet<u32> = plan.iter().map(|r| r.session).collect();
        assert_eq!(
            sessions.len(),
            s.load.sessions as usize,
            "every session gets requests"
        );
        let again: Vec<PlannedRequest> = s.requests().take(100).collect();
        assert_eq!(&plan[..100], &again[..]);
        let last = plan.last().unwrap();
        assert!(last.scenario_s < s.end_s() && last.wall_offset < s.wall_duration());
        assert_eq!(s.load.session_key(7), "s-7");

        // The daily cycle shows: the afternoon hour gets about three times the night's.
        let d = find(&shipped_dir(), "diurnal-noise").unwrap();
        let hour = |h: f64| {
            d.requests()
                .filter(|r| r.scenario_s >= h * 3600.0 && r.scenario_s < (h + 1.0) * 3600.0)
                .count() as f64
        };
        let (night, peak) = (hour(2.0), hour(14.0));
        assert!(
            peak / night > 2.5 && peak / night < 3.5,
            "{night} at 02:00, {peak} at 14:00"
        );
    }
}
