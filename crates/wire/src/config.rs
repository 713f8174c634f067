//! The filter's plugin configuration: parsed from JSON, then checked into [`ValidConfig`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The request header the filter sets to the chosen group; the route's `cluster_header` reads it.
pub const DEFAULT_ROUTE_HEADER: &str = "x-shadowplane-cluster";

/// How often each worker sends a report when the configuration does not say.
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 1000;

const DEFAULT_BUFFER_REPORTS: usize = 64;
const DEFAULT_MAX_CLUSTERS: usize = 32;
const DEFAULT_TELEMETRY_PATH: &str = "/v1/telemetry";
const DEFAULT_TELEMETRY_AUTHORITY: &str = "shadowplane-telemetry";
const DEFAULT_TELEMETRY_TIMEOUT_MS: u64 = 2000;

/// The filter configuration as written by an operator or pushed by the control plane (ECDS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The groups traffic is split over, with their weights. Required, at least one; the
    /// names are Envoy cluster names.
    pub groups: Vec<GroupWeight>,
    /// How a request is given a group. Default: `random`.
    #[serde(default)]
    pub routing: RoutingMode,
    /// Where the session key comes from. Required when `routing` is `sticky`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<SessionKey>,
    /// The request header set to the chosen group. Default: `x-shadowplane-cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_header: Option<String>,
    /// Milliseconds between reports, per worker. Default: 1000; range 100 to 600000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval_ms: Option<u64>,
    /// Where reports go. Default: none (the filter then only routes and keeps Envoy metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetryTarget>,
    /// Reports kept per worker while the collector is unreachable; past it the oldest are
    /// dropped and counted. Default: 64; range 1 to 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_reports: Option<usize>,
    /// Distinct upstream clusters tracked per window; further ones are counted under
    /// `other`. Default: 32; range 1 to 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clusters: Option<usize>,
}

/// One group and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupWeight {
    /// The Envoy cluster of the group. Required.
    pub name: String,
    /// Relative weight, 0 to 1000000; the weights need not add up to 100. Required.
    pub weight: u32,
}

/// How requests are assigned to groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Weighted random per request.
    #[default]
    Random,
    /// A session key always maps to the same group for a given weight set; when weights move,
    /// only the sessions on the boundary that moved change group.
    Sticky,
}

/// Where the sticky session key is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SessionKey {
    /// A request header, by name.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
}

/// The collector the filter reports to, through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryTarget {
    /// The Envoy cluster that reaches the collector. Required.
    pub cluster: String,
    /// HTTP path reports are POSTed to. Default: `/v1/telemetry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `:authority` of the report requests. Default: `shadowplane-telemetry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Sent as `authorization: Bearer TOKEN`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// Milliseconds before a report request counts as failed. Default: 2000; range 1 to 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A configuration every field of which was checked, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConfig {
    /// Groups in configuration order, with weights (at least one, total above zero).
    pub groups: Vec<GroupWeight>,
    /// Routing mode.
    pub routing: RoutingMode,
    /// Session key source (`Some` exactly when routing is sticky).
    pub session_key: Option<SessionKey>,
    /// Header set to the chosen group, lower case.
    pub route_header: String,
    /// Milliseconds between reports.
    pub report_interval_ms: u64,
    /// Collector, if any.
    pub telemetry: Option<ValidTelemetry>,
    /// Reports buffered per worker.
    pub buffer_reports: usize,
    /// Distinct clusters tracked per window.
    pub max_clusters: usize,
}

/// A checked [`TelemetryTarget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidTelemetry {
    /// Envoy cluster of the collector.
    pub cluster: String,
    /// Request path.
    pub path: String,
    /// Request authority.
    pub authority: String,
    /// Bearer token, if any.
    pub auth_token: Option<String>,
    /// Callout timeout in milliseconds.
    pub timeout_ms: u64,
}

impl FilterConfig {
    /// Parses JSON; syntax errors carry line and column.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Serializes to JSON (what the control plane pushes).
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and enums always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks every field and fills in defaults.
    pub fn check(self) -> Result<ValidConfig> {
        if self.groups.is_empty() {
            return Err(Error::config("groups", "at least one group is required"));
        }
        let mut total: u64 = 0;
        for (i, g) in self.groups.iter().enumerate() {
            if g.name.is_empty() || !g.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::config(
                    format!("groups[{i}].name"),
                    format!(
                        "\"{}\" is not a cluster name (visible ASCII, not empty)",
                        g.name
                    ),
                ));
            }
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                return Err(Error::config(
                    format!("groups[{i}].name"),
                    format!("\"{}\" is listed twice", g.name),
                ));
            }
            if g.weight > 1_000_000 {
                return Err(Error::config(
                    format!("groups[{i}].weight"),
                    format!("{} is above 1000000", g.weight),
                ));
            }
            total += u64::from(g.weight);
        }
        if total == 0 {
            return Err(Error::config("groups", "the weights add up to zero"));
        }
        let session_key = match (self.routing, self.session_key) {
            (RoutingMode::Sticky, None) => {
                return Err(Error::config(
                    "session_key",
                    "sticky routing needs a session key (header or cookie)",
                ));
            }
            (_, Some(SessionKey::Header(h) | SessionKey::Cookie(h))) if !is_token(&h) => {
                return Err(Error::config(
                    "session_key",
                    format!("\"{h}\" is not a valid header or cookie name"),
                ));
            }
            (RoutingMode::Random, Some(_)) => {
                return Err(Error::config(
                    "session_key",
                    "only used with \"routing\": \"sticky\"",
                ));
            }
            (RoutingMode::Sticky, k) => k,
            (RoutingMode::Random, None) => None,
        };
        let route_header = self
            .route_header
            .unwrap_or_else(|| DEFAULT_ROUTE_HEADER.to_string());
        if !is_token(&route_header) {
            return Err(Error::config(
                "route_header",
                format!("\"{route_header}\" is not a valid header name"),
            ));
        }
        let report_interval_ms = self
            .report_interval_ms
            .unwrap_or(DEFAULT_REPORT_INTERVAL_MS);
        range("report_interval_ms", report_interval_ms, 100, 600_000)?;
        let buffer_reports = self.buffer_reports.unwrap_or(DEFAULT_BUFFER_REPORTS);
        range("buffer_reports", buffer_reports as u64, 1, 10_000)?;
        let max_clusters = self.max_clusters.unwrap_or(DEFAULT_MAX_CLUSTERS);
        range("max_clusters", max_clusters as u64, 1, 1024)?;
        let telemetry = self.telemetry.map(check_telemetry).transpose()?;
        Ok(ValidConfig {
            groups: self.groups,
            routing: self.routing,
            session_key,
            route_header: route_header.to_ascii_lowercase(),
            report_interval_ms,
            telemetry,
            buffer_reports,
            max_clusters,
        })
    }
}

impl ValidConfig {
    /// Parses and checks in one step.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        FilterConfig::from_json(bytes)?.check()
    }
}

fn check_telemetry(t: TelemetryTarget) -> Result<ValidTelemetry> {
    if t.cluster.is_empty() {
        return Err(Error::config("telemetry.cluster", "must not be empty"));
    }
    let path = t.path.unwrap_or_else(|| DEFAULT_TELEMETRY_PATH.to_string());
    if !path.starts_with('/') {
        return Err(Error::config(
            "telemetry.path",
            format!("\"{path}\" must start with '/'"),
        ));
    }
    let authority = t
        .authority
        .unwrap_or_else(|| DEFAULT_TELEMETRY_AUTHORITY.to_string());
    if authority.is_empty() {
        return Err(Error::config("telemetry.authority", "must not be empty"));
    }
    if let Some(tok) = &t.auth_token
        && (tok.is_empty() || !tok.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Error::config(
            "telemetry.auth_token",
            "must be visible ASCII, not empty",
        ));
    }
    let timeout_ms = t.timeout_ms.unwrap_or(DEFAULT_TELEMETRY_TIMEOUT_MS);
    range("telemetry.timeout_ms", timeout_ms, 1, 60_000)?;
    Ok(ValidTelemetry {
        cluster: t.cluster,
        path,
        authority,
        auth_token: t.auth_token,
        timeout_ms,
    })
}

fn range(field: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(field, format!("{v} is outside {lo} to {hi}")))
    }
}

/// An RFC 9110 token: what header and cookie names may be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        ValidConfig::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = ValidConfig::from_json(
            br#"{"groups":[{"name":"primary","weight":90},{"name":"shadow","weight":10}]}"#,
        )
        .unwrap();
        assert_eq!(c.routing, RoutingMode::Random);
        assert_eq!(c.route_header, DEFAULT_ROUTE_HEADER);
        assert_eq!(c.report_interval_ms, 1000);
        assert_eq!(c.telemetry, None);
    }

    #[test]
    fn full_config_round_trips() {
        let json = r#"{"groups":[{"name":"primary","weight":1}],"routing":"sticky","session_key":{"cookie":"sid"},
            "telemetry":{"cluster":"t","auth_token":"s3cret"},"report_interval_ms":250}"#;
        let cfg = FilterConfig::from_json(json.as_bytes()).unwrap();
        assert_eq!(
            FilterConfig::from_json(cfg.to_json().as_bytes()).unwrap(),
            cfg
        );
        let v = cfg.check().unwrap();
        assert_eq!(v.session_key, Some(SessionKey::Cookie("sid".into())));
        assert_eq!(v.telemetry.unwrap().path, "/v1/telemetry");
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"groups":[]}"#).contains("groups: at least one"));
        assert!(err(r#"{"groups":[{"name":"a","weight":0}]}"#).contains("weights add up to zero"));
        assert!(
            err(r#"{"groups":[{"name":"a","weight":1},{"name":"a","weight":1}]}"#)
                .contains("groups[1].name")
        );
        assert!(err(r#"{"groups":[{"name":"a","weight":2000000}]}"#).contains("groups[0].weight"));
        assert!(
            err(r#"{"groups":[{"name":"a","weight":1}],"routing":"sticky"}"#)
                .contains("session_key")
        );
        assert!(
            err(r#"{"groups":[{"name":"a","weight":1}],"report_interval_ms":5}"#)
                .contains("report_interval_ms")
        );
        assert!(
            err(r#"{"groups":[{"name":"a","weight":1}],"telemetry":{"cluster":"t","path":"x"}}"#)
                .contains("telemetry.path")
        );
    }

    #[test]
    fn unknown_fields_and_bad_json_say_where() {
        let e = err("{\"groups\":[{\"name\":\"a\",\"weight\":1}],\n\"wieghts\":1}");
        assert!(
            e.contains("unknown field `wieghts`") && e.contains("line 2"),
            "{e}"
        );
        assert!(err("{").contains("line 1"));
    }
}
