//! The shipped static bootstrap (`envoy-config/filter-static.yaml`) running for real: one
//! Envoy with the shadowplane filter in front of two upstreams, `primary` and `shadow`,
//! reporting to a collector, with weights and filter configuration changed at run time through
//! the bootstrap's watched files.
//!
//! The stack uses the repository's files themselves, rewriting only ports and paths, so a test
//! that passes here proves the bootstrap a user copies from the README.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use serde_yaml_ng::Value;
use tempfile::TempDir;

use crate::{Collector, Envoy, EnvoyOpts, Upstream};

/// The token the stack's collector expects and the default filter configuration sends.
pub const TOKEN: &str = "test-token";

/// The counter of route tables the test Envoy applied from `routes.yaml`.
const RDS_UPDATES: &str = "http.ingress.rds.shadowplane.update_success";

/// The repository root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The filter's `.wasm`: `SHADOWPLANE_FILTER_WASM`, else the `--profile wasm` build output.
/// Panics with the build command when it is missing: a test without the filter must fail.
pub fn filter_wasm() -> PathBuf {
    let path = std::env::var_os("SHADOWPLANE_FILTER_WASM").map_or_else(
        || workspace_root().join("target/wasm32-wasip1/wasm/shadowplane_filter.wasm"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the filter is not built at {}: run `cargo xtask test`, or \
         `cargo build -p shadowplane-filter --target wasm32-wasip1 --profile wasm`",
        path.display()
    );
    path
}

/// A filter configuration for the stack: `primary`/`shadow` at the given weights, reporting
/// to the stack's collector every `interval_ms`.
pub fn filter_config(primary: u32, shadow: u32, interval_ms: u64) -> serde_json::Value {
    json!({
        "groups": [{"name": "primary", "weight": primary}, {"name": "shadow", "weight": shadow}],
        "report_interval_ms": interval_ms,
        "telemetry": {"cluster": "shadowplane_telemetry", "auth_token": TOKEN},
    })
}

/// Envoy, two upstreams and a collector wired by the shipped bootstrap.
pub struct FilterStack {
    /// The Envoy under test.
    pub envoy: Envoy,
    /// Upstream of cluster `primary`.
    pub primary: Upstream,
    /// Upstream of cluster `shadow`.
    pub shadow: Upstream,
    /// The telemetry collector.
    pub collector: Collector,
    /// URL of the ingress listener, without a path.
    pub base_url: String,
    dynamic: TempDir,
    filter_template: Value,
    routes_template: Value,
}

fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Replaces `from` with `to` in `text`, failing when `from` is absent: a silent miss would
/// leave the test pointing at the repository's own ports.
fn replace_all(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    if !text.contains(from) {
        bail!("the bootstrap no longer contains {from:?}; update the filter stack");
    }
    Ok(text.replace(from, to))
}

impl FilterStack {
    /// Starts everything with `filter` as the filter's configuration and the route's fallback
    /// weights taken from its groups.
    pub async fn start(filter: serde_json::Value) -> anyhow::Result<FilterStack> {
        Self::start_with(filter, true).await
    }

    /// The same bootstrap with the shadowplane filter taken out of the HTTP filter chain, as
    /// if it had failed open: the routes alone decide (`filter` still gives their weights).
    pub async fn start_without_filter(filter: serde_json::Value) -> anyhow::Result<FilterStack> {
        Self::start_with(filter, false).await
    }

    async fn start_with(
        filter: serde_json::Value,
        load_filter: bool,
    ) -> anyhow::Result<FilterStack> {
        let root = workspace_root();
        let config_dir = root.join("envoy-config");
        let primary = Upstream::start("primary").await;
        let shadow = Upstream::start("shadow").await;
        let collector = Collector::start(TOKEN).await;
        let dynamic = tempfile::tempdir()?;

        let mut bootstrap = fs::read_to_string(config_dir.join("filter-static.yaml"))?;
        let dyn_dir = dynamic.path().display().to_string();
        for (from, to) in [
            ("port_value: 9901", "port_value: 0".to_string()),
            ("port_value: 10000", "port_value: 0".to_string()),
            (
                "port_value: 8081",
                format!("port_value: {}", primary.port()),
            ),
            ("port_value: 8082", format!("port_value: {}", shadow.port())),
            (
                "port_value: 18001",
                format!("port_value: {}", collector.port()),
            ),
            ("envoy-config/filter-static", dyn_dir),
        ] {
            bootstrap = replace_all(&bootstrap, from, &to)?;
        }
        if !load_filter {
            let mut doc: Value = serde_yaml_ng::from_str(&bootstrap)?;
            let chain = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
                [0]["typed_config"]["http_filters"];
            let Value::Sequence(filters) = chain else {
                bail!("the bootstrap has no http_filters list")
            };
            let before = filters.len();
            filters.retain(|f| f["name"].as_str() != Some("shadowplane"));
            if filters.len() == before {
                bail!("the bootstrap has no http filter named shadowplane");
            }
            bootstrap = serde_yaml_ng::to_string(&doc)?;
        }

        let filter_template = read_yaml(&config_dir.join("filter-static/filter.yaml"))?;
        let routes_template = read_yaml(&config_dir.join("filter-static/routes.yaml"))?;
        write_filter(dynamic.path(), &filter_template, &filter)?;
        write_routes(dynamic.path(), &routes_template, &weights_of(&filter))?;
        let envoy = Envoy::start(&bootstrap, EnvoyOpts::default()).await?;
        let port = envoy.listener_port("ingress").await;
        Ok(FilterStack {
            envoy,
            primary,
            shadow,
            collector,
            base_url: format!("http://127.0.0.1:{port}"),
            dynamic,
            filter_template,
            routes_template,
        })
    }

    /// URL of `path` on the ingress listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Pushes a new filter configuration and waits until Envoy has applied it (its ECDS
    /// success counter moved) or rejected it. Returns whether it was applied.
    pub async fn set_filter_config(&self, filter: &serde_json::Value) -> anyhow::Result<bool> {
        let ok = "extension_config_discovery.http_filter.shadowplane.update_success";
        // A configuration Envoy cannot build (the filter's on_configure said no) is "rejected".
        let bad = "extension_config_discovery.http_filter.shadowplane.update_rejected";
        let before_ok = self.envoy.stat_counter(ok).await.unwrap_or(0);
        let before_bad = self.envoy.stat_counter(bad).await.unwrap_or(0);
        self.write_filter(filter)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.envoy.stat_counter(ok).await.unwrap_or(0) > before_ok {
                return Ok(true);
            }
            if self.envoy.stat_counter(bad).await.unwrap_or(0) > before_bad {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("Envoy neither applied nor rejected the filter configuration within 10 s")
    }

    /// Sets both the filter's weights and the route's fallback weights, filter first, and
    /// waits until Envoy applied both.
    pub async fn set_weights(&self, filter: &serde_json::Value) -> anyhow::Result<()> {
        let before = self.route_updates().await;
        if !self.set_filter_config(filter).await? {
            bail!("Envoy rejected the filter configuration {filter}");
        }
        self.write_routes(&weights_of(filter))?;
        self.wait_routes_applied(before).await
    }

    /// Puts `route` (one route of a virtual host, as YAML) before the shipped routes, with the
    /// split's weights from `filter`, and waits until Envoy applied it: a route table that
    /// sends some requests somewhere other than the group the filter named.
    pub async fn prepend_route(
        &self,
        filter: &serde_json::Value,
        route: &str,
    ) -> anyhow::Result<()> {
        let before = self.route_updates().await;
        let route: Value = serde_yaml_ng::from_str(route).context("the route is not YAML")?;
        let mut doc = self.routes_template.clone();
        doc["resources"][0]["virtual_hosts"][0]["routes"]
            .as_sequence_mut()
            .context("routes.yaml has no routes")?
            .insert(0, route);
        write_routes(self.dynamic.path(), &doc, &weights_of(filter))?;
        self.wait_routes_applied(before).await
    }

    /// Route tables Envoy has applied so far.
    async fn route_updates(&self) -> u64 {
        self.envoy.stat_counter(RDS_UPDATES).await.unwrap_or(0)
    }

    /// Waits until Envoy applied one route table more than `before`.
    async fn wait_routes_applied(&self, before: u64) -> anyhow::Result<()> {
        if !self
            .envoy
            .wait_for_counter(RDS_UPDATES, before + 1, Duration::from_secs(10))
            .await
        {
            bail!("Envoy did not apply the new routes within 10 s");
        }
        Ok(())
    }

    fn write_filter(&self, filter: &serde_json::Value) -> anyhow::Result<()> {
        write_filter(self.dynamic.path(), &self.filter_template, filter)
    }

    fn write_routes(&self, weights: &[(String, u32)]) -> anyhow::Result<()> {
        write_routes(self.dynamic.path(), &self.routes_template, weights)
    }
}

fn write_filter(dir: &Path, template: &Value, filter: &serde_json::Value) -> anyhow::Result<()> {
    let mut doc = template.clone();
    let config = &mut doc["resources"][0]["typed_config"]["config"];
    config["configuration"]["value"] = Value::String(filter.to_string());
    config["vm_config"]["code"]["local"]["filename"] =
        Value::String(filter_wasm().display().to_string());
    replace_file(dir, "filter.yaml", &doc)
}

fn write_routes(dir: &Path, template: &Value, weights: &[(String, u32)]) -> anyhow::Result<()> {
    let mut doc = template.clone();
    let clusters: Vec<Value> = weights
        .iter()
        .map(|(name, w)| {
            let mut m = serde_yaml_ng::Mapping::new();
            m.insert("name".into(), name.clone().into());
            m.insert("weight".into(), (*w).into());
            Value::Mapping(m)
        })
        .collect();
    // The split is the last route, after one header route per group.
    let split = doc["resources"][0]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .and_then(|routes| routes.last_mut())
        .context("routes.yaml has no routes")?;
    split["route"]["weighted_clusters"]["clusters"] = Value::Sequence(clusters);
    replace_file(dir, "routes.yaml", &doc)
}

/// Envoy watches the directory for moves: write a sibling, then rename it over the file.
fn replace_file(dir: &Path, name: &str, doc: &Value) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, serde_yaml_ng::to_string(doc)?)?;
    fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// `(group, weight)` pairs of a filter configuration; groups with a weight of zero are kept
/// (Envoy accepts zero-weight clusters as long as one is above zero).
fn weights_of(filter: &serde_json::Value) -> Vec<(String, u32)> {
    filter["groups"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .filter_map(|g| {
                    Some((
                        g["name"].as_str()?.to_string(),
                        u32::try_from(g["weight"].as_u64()?).ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}
