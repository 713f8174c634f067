//! The demo's report page: one self-contained HTML file (inline SVG, no script, no network)
//! with the forecast against the actual p99 and its interval band, the weights, the errors
//! and the cost over time, and the moments that matter marked on every plot.

use std::fmt::Write as _;

use super::Summary;
use super::run::Outcome;

const W: f64 = 900.0;
const H: f64 = 220.0;
const PAD_L: f64 = 60.0;
const PAD_R: f64 = 20.0;
const PAD_T: f64 = 14.0;
const PAD_B: f64 = 30.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mmss(t: f64) -> String {
    let s = t.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// One plot: x is scenario time, y from 0 to `y_max`.
struct Plot {
    x0: f64,
    x1: f64,
    y_max: f64,
    svg: String,
}

impl Plot {
    fn new(x0: f64, x1: f64, y_max: f64, y_label: &str) -> Plot {
        let y_max = if y_max.is_finite() && y_max > 0.0 {
            y_max
        } else {
            1.0
        };
        // Four gridlines at a round step: 1, 2, 2.5 or 5 times a power of ten.
        let raw = y_max / 4.0;
        let pow = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .into_iter()
            .map(|m| m * pow)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * pow);
        let y_max = step * 4.0;
        let mut p = Plot {
            x0,
            x1: if x1 > x0 { x1 } else { x0 + 1.0 },
            y_max,
            svg: String::new(),
        };
        let _ = write!(
            p.svg,
            r##"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">"##
        );
        let _ = write!(
            p.svg,
            r##"<rect x="{PAD_L}" y="{PAD_T}" width="{}" height="{}" fill="#fafafa" stroke="#ccc"/>"##,
            W - PAD_L - PAD_R,
            H - PAD_T - PAD_B
        );
        for i in 0..=4 {
            let v = y_max * i as f64 / 4.0;
            let y = p.y(v);
            let _ = write!(
                p.svg,
                r##"<line x1="{PAD_L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - PAD_R,
                PAD_L - 4.0,
                y + 4.0,
                trim(v)
            );
        }
        for i in 0..=6 {
            let t = p.x0 + (p.x1 - p.x0) * i as f64 / 6.0;
            let _ = write!(
                p.svg,
                r##"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
                p.x(t),
                H - 10.0,
                mmss(t)
            );
        }
        let _ = write!(
            p.svg,
            r##"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"##,
            H / 2.0,
            H / 2.0,
            esc(y_label)
        );
        p
    }

    fn x(&self, t: f64) -> f64 {
        PAD_L + (t - self.x0) / (self.x1 - self.x0) * (W - PAD_L - PAD_R)
    }

    fn y(&self, v: f64) -> f64 {
        H - PAD_B - v.clamp(0.0, self.y_max) / self.y_max * (H - PAD_T - PAD_B)
    }

    fn line(&mut self, pts: &[(f64, f64)], color: &str, dash: bool, label: &str) {
        if pts.is_empty() {
            return;
        }
        let d: Vec<String> = pts
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v)))
            .collect();
        let dash = if dash {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = write!(
            self.svg,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{}"><title>{}</title></polyline>"##,
            d.join(" "),
            esc(label)
        );
    }

    fn band(&mut self, pts: &[(f64, f64, f64)], color: &str) {
        if pts.is_empty() {
            return;
        }
        let mut d: Vec<String> = pts
            .iter()
            .map(|(t, lo, _)| format!("{:.1},{:.1}", self.x(*t), self.y(*lo)))
            .collect();
        d.extend(
            pts.iter()
                .rev()
                .map(|(t, _, hi)| format!("{:.1},{:.1}", self.x(*t), self.y(*hi))),
        );
        let _ = write!(
            self.svg,
            r##"<polygon fill="{color}" fill-opacity="0.25" stroke="none" points="{}"/>"##,
            d.join(" ")
        );
    }

    fn hline(&mut self, v: f64, color: &str, label: &str) {
        let y = self.y(v);
        let _ = write!(
            self.svg,
            r##"<line x1="{PAD_L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{color}" stroke-dasharray="2 2"/><text x="{}" y="{:.1}" fill="{color}" text-anchor="end">{}</text>"##,
            W - PAD_R,
            W - PAD_R - 4.0,
            y - 3.0,
            esc(label)
        );
    }

    fn marker(&mut self, t: f64, color: &str, label: &str, row: usize) {
        if t < self.x0 || t > self.x1 {
            return;
        }
        let x = self.x(t);
        let _ = write!(
            self.svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{PAD_T}" y2="{}" stroke="{color}"/><text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"##,
            H - PAD_B,
            x + 3.0,
            PAD_T + 12.0 + 12.0 * row as f64,
            esc(label)
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>");
        self.svg
    }
}

fn trim(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The page.
pub fn html(o: &Outcome, s: &Summary) -> String {
    let sc = &o.scenario;
    let (x0, x1) = (sc.start_s, sc.end_s());
    let marks = |p: &mut Plot| {
        let mut row = 0;
        let mut mark = |p: &mut Plot, t: Option<f64>, color: &str, label: &str| {
            if let Some(t) = t {
                p.marker(t, color, label, row);
                row += 1;
            }
        };
        mark(p, s.fault_onset_s, "#b45309", "fault onset");
        mark(p, s.migration_started_s, "#1d4ed8", "migration decided");
        mark(p, s.cutover_s, "#15803d", "cutover");
        mark(p, s.slo_breach_s, "#b91c1c", "SLO breach (profile)");
    };

    // Latency.
    let actual: Vec<(f64, f64)> = o
        .ticks
        .iter()
        .filter_map(|t| Some((t.t_s, t.client_p99_ms?)))
        .collect();
    let model: Vec<(f64, f64)> = o
        .ticks
        .iter()
        .filter_map(|t| Some((t.t_s, t.forecast?[0])))
        .collect();
    let measured: Vec<(f64, f64)> = o
        .ticks
        .iter()
        .filter_map(|t| Some((t.t_s, t.model_p99_ms?)))
        .collect();
    let band: Vec<(f64, f64, f64)> = o
        .ticks
        .iter()
        .filter_map(|t| {
            let f = t.forecast?;
            Some((t.t_s, f[1], f[2]))
        })
        .collect();
    let y_max = actual
        .iter()
        .map(|p| p.1)
        .chain(band.iter().map(|b| b.2))
        .fold(sc.slo.p99_ms * 1.3, f64::max)
        .min(sc.slo.p99_ms * 4.0);
    let mut lat = Plot::new(x0, x1, y_max, "p99 ms");
    lat.band(&band, "#60a5fa");
    lat.line(&model, "#1d4ed8", true, "forecast (mean), 95% band");
    lat.line(
        &measured,
        "#f59e0b",
        false,
        "the primary's p99 in the filter's telemetry",
    );
    lat.line(&actual, "#111827", false, "p99 the clients saw, per second");
    lat.hline(
        sc.slo.p99_ms,
        "#b91c1c",
        &format!("SLO {} ms", sc.slo.p99_ms),
    );
    marks(&mut lat);

    // Weights, and who served: the shadow's configured share, and each group's share of the
    // answers the clients got (the roles swap, the machines stay).
    let weights: Vec<(f64, f64)> = o.ticks.iter().map(|t| (t.t_s, t.shadow_percent)).collect();
    let mut wp = Plot::new(x0, x1, 100.0, "% of requests");
    wp.line(&weights, "#7c3aed", true, "the shadow's configured share");
    let mut groups: Vec<&String> = o.ticks.iter().flat_map(|t| t.served.keys()).collect();
    groups.sort();
    groups.dedup();
    const COLORS: [&str; 5] = ["#111827", "#15803d", "#b45309", "#0e7490", "#be185d"];
    let mut legend = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = o
            .ticks
            .iter()
            .filter(|t| t.requests > 0)
            .map(|t| {
                let n = t.served.get(*g).copied().unwrap_or(0) as f64;
                (t.t_s, 100.0 * n / t.requests as f64)
            })
            .collect();
        wp.line(&pts, color, false, &format!("answered by {g}"));
        legend.push(format!(
            r#"<span style="color:{color}">&#9632; {}</span>"#,
            esc(g)
        ));
    }
    marks(&mut wp);
    let legend = legend.join(" &nbsp; ");

    // Errors.
    let failed: Vec<(f64, f64)> = o.ticks.iter().map(|t| (t.t_s, t.failed as f64)).collect();
    let rq: Vec<(f64, f64)> = o.ticks.iter().map(|t| (t.t_s, t.requests as f64)).collect();
    let e_max = rq.iter().map(|p| p.1).fold(1.0, f64::max);
    let mut ep = Plot::new(x0, x1, e_max, "requests / s");
    ep.line(&rq, "#9ca3af", false, "requests answered");
    ep.line(&failed, "#b91c1c", false, "failed (no answer or 5xx)");
    marks(&mut ep);

    // Cost.
    let cost: Vec<(f64, f64)> = o
        .ticks
        .iter()
        .filter_map(|t| Some((t.t_s, t.cost_per_hour?)))
        .collect();
    let c_max = cost
        .iter()
        .map(|p| p.1)
        .chain(sc.budget_per_hour)
        .fold(0.0, f64::max)
        * 1.2;
    let mut cp = Plot::new(x0, x1, c_max, "cost / h");
    cp.line(&cost, "#0f766e", false, "both groups' cost per hour");
    if let Some(b) = sc.budget_per_hour {
        cp.hline(b, "#b91c1c", &format!("budget {b}/h"));
    }
    marks(&mut cp);

    let row = |k: &str, v: String| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    let t = |v: Option<f64>| v.map_or_else(|| "-".to_string(), mmss);
    let mut table = String::new();
    for (k, v) in [
        ("policy", format!("{:?}", s.policy)),
        ("fault onset", t(s.fault_onset_s)),
        ("SLO breach (by the primary's profile)", t(s.slo_breach_s)),
        ("migration decided", t(s.migration_started_s)),
        ("reason", s.reason.clone().unwrap_or_else(|| "-".into())),
        ("cutover", t(s.cutover_s)),
        (
            "cutover before the breach",
            s.cutover_before_breach
                .map_or_else(|| "-".into(), |b| if b { "yes" } else { "no" }.into()),
        ),
        ("requests", s.requests.to_string()),
        ("failed requests", s.failed.to_string()),
        (
            "failed without an upstream's answer (what a migration could cause)",
            s.failed_in_transit.to_string(),
        ),
        (
            "requests during the migration (failed)",
            format!(
                "{} ({})",
                s.requests_during_migration, s.failed_during_migration
            ),
        ),
        (
            &format!(
                "SLO-violating requests (answered in over {} ms)",
                sc.slo.p99_ms
            ),
            s.slo_violating.to_string(),
        ),
        ("migrations started", s.migrations.to_string()),
        ("rollbacks", s.rollbacks.to_string()),
        (
            "cost",
            s.cost.map_or_else(|| "-".into(), |c| format!("{c:.3}")),
        ),
    ] {
        table += &row(k, v);
    }
    let mut events = String::new();
    for e in &o.events {
        let _ = write!(
            events,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            mmss(e["t_s"].as_f64().unwrap_or(0.0)),
            esc(e["kind"].as_str().unwrap_or("?")),
            e["shadow_percent"]
                .as_u64()
                .map_or_else(String::new, |p| format!("{p}%")),
            esc(e["reason"].as_str().unwrap_or(""))
        );
    }
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shadowplane: {name}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#111}}table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}}h2{{margin-top:1.6em}}</style>
</head><body>
<h1>shadowplane: {name}</h1>
<p>{desc}</p>
<p>{dur} of scenario time at {scale}x; groups: {g0} (the scenario's primary) and {g1} (its shadow). Times are scenario time.</p>
<table>{table}</table>
<h2>p99 latency: forecast and actual</h2>
<p>Black: the p99 the clients saw each second (load generator and Envoy included). Orange: the primary's p99 as the filter measured it, which the models learn from. Blue: the control plane's forecast of it, {horizon} points ahead, with its 95% band.</p>{lat}
<h2>Weights</h2>
<p>Dashed: the shadow's configured share (the shadow is a new group after each role swap). Solid: the share of the answers each group gave: {legend}</p>{wp}
<h2>Requests and errors</h2>{ep}
<h2>Cost</h2>{cp}
<h2>Events</h2><table><tr><th>time</th><th>event</th><th>shadow</th><th>reason</th></tr>{events}</table>
</body></html>
"##,
        name = esc(&sc.name),
        horizon = super::run::HORIZON,
        desc = esc(sc.description.trim()),
        dur = mmss(sc.duration_s),
        scale = sc.time_scale,
        g0 = esc(&o.groups.0),
        g1 = esc(&o.groups.1),
        lat = lat.finish(),
        wp = wp.finish(),
        ep = ep.finish(),
        cp = cp.finish(),
    )
}
