//! Envoy's own statistics, streamed by its metrics-service stats sink over the xDS cluster
//! (envoy-config/ads-bootstrap.yaml): per flush, each cluster's `upstream_rq_time`.
//!
//! This is how a cold shadow's latency is measured. Mirrored requests are sent by the router
//! after the HTTP filters, so the shadowplane filter never sees them; Envoy's cluster
//! statistics count them like any other upstream request. Only the latest samples of a bounded
//! number of clusters are kept, in memory: they are for the status, the filter's telemetry
//! stays the record.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::io::prometheus::client::MetricType;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Samples kept per cluster (at Envoy's 1 s flush, a minute per Envoy).
const PER_CLUSTER: usize = 64;
/// Clusters followed at most; more are ignored (a guard against a huge fleet of clusters).
const CLUSTERS: usize = 256;
/// Largest metrics message accepted: a flush carries every statistic of the Envoy.
const MAX_MESSAGE: usize = 16 << 20;

/// One flush of one cluster's upstream request time on one Envoy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When Envoy took the snapshot, ms since the Unix epoch.
    pub at_ms: u64,
    /// The Envoy's node id.
    pub node: String,
    /// Requests completed in the flush interval.
    pub requests: u64,
    /// Median upstream request time, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// What a group's recent samples add up to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests over the samples.
    pub requests: u64,
    /// Request-weighted mean of the samples' medians, ms.
    pub p50_ms: f64,
    /// The highest of the samples' 99th percentiles, ms.
    pub p99_ms: f64,
    /// Samples summed.
    pub samples: usize,
}

/// The latest upstream request times, by cluster.
#[derive(Default)]
pub struct EnvoyStats {
    clusters: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EnvoyStats {
    /// Takes in one message of Envoy's stats sink.
    pub fn take(&self, msg: &StreamMetricsMessage, node: &str) {
        let mut clusters = lock(&self.clusters);
        for family in &msg.envoy_metrics {
            let Some(cluster) = family
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix("cluster."))
                .and_then(|n| n.strip_suffix(".upstream_rq_time"))
            else {
                continue;
            };
            if family.r#type != Some(MetricType::Summary as i32) {
                continue;
            }
            for metric in &family.metric {
                let Some(summary) = &metric.summary else {
                    continue;
                };
                let requests = summary.sample_count.unwrap_or(0);
                if requests == 0 {
                    continue;
                }
                let q = |want: f64| {
                    summary
                        .quantile
                        .iter()
                        .find(|q| q.quantile.is_some_and(|v| (v - want).abs() < 1e-9))
                        .and_then(|q| q.value)
                        .filter(|v| v.is_finite())
                };
                let (Some(p50_ms), Some(p99_ms)) = (q(0.5), q(0.99)) else {
                    continue;
                };
                if !clusters.contains_key(cluster) && clusters.len() >= CLUSTERS {
                    continue;
                }
                let samples = clusters.entry(cluster.to_string()).or_default();
                samples.push_back(Sample {
                    at_ms: metric.timestamp_ms.unwrap_or(0).max(0) as u64,
                    node: node.to_string(),
                    requests,
                    p50_ms,
                    p99_ms,
                });
                while samples.len() > PER_CLUSTER {
                    samples.pop_front();
                }
            }
        }
    }

    /// The samples of `cluster` taken at or after `since_ms`, oldest first.
    pub fn samples(&self, cluster: &str, since_ms: u64) -> Vec<Sample> {
        lock(&self.clusters)
            .get(cluster)
            .map(|q| q.iter().filter(|s| s.at_ms >= since_ms).cloned().collect())
            .unwrap_or_default()
    }

    /// The samples of `cluster` taken at or after `since_ms`, summed; `None` without any.
    pub fn summary(&self, cluster: &str, since_ms: u64) -> Option<Summary> {
        let clusters = lock(&self.clusters);
        let recent: Vec<&Sample> = clusters
            .get(cluster)?
            .iter()
            .filter(|s| s.at_ms >= since_ms)
            .collect();
        let requests: u64 = recent.iter().map(|s| s.requests).sum();
        if requests == 0 {
            return None;
        }
        let weighted: f64 = recent.iter().map(|s| s.p50_ms * s.requests as f64).sum();
        Some(Summary {
            requests,
            p50_ms: weighted / requests as f64,
            p99_ms: recent.iter().map(|s| s.p99_ms).fold(0.0, f64::max),
            samples: recent.len(),
        })
    }
}

/// The gRPC metrics service Envoy's stats sink streams to.
#[derive(Clone)]
pub struct Sink {
    stats: Arc<EnvoyStats>,
    stop: watch::Receiver<bool>,
}

impl Sink {
    /// The service over `stats`; its streams end when `stop` turns true.
    pub fn server(
        stats: Arc<EnvoyStats>,
        stop: watch::Receiver<bool>,
    ) -> MetricsServiceServer<Sink> {
        MetricsServiceServer::new(Sink { stats, stop }).max_decoding_message_size(MAX_MESSAGE)
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn stream_metrics(
        &self,
        request: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut stop = self.stop.clone();
        // The first message names the node; later ones may leave it out.
        let mut node = String::new();
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(m)) => {
                        if let Some(id) = m.identifier.as_ref().and_then(|i| i.node.as_ref()).map(|n| n.id.clone()) {
                            node = id;
                        }
                        self.stats.take(&m, &node);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(node, "metrics stream ended: {e}");
                        break;
                    }
                },
                _ = stop.changed() => break,
            }
        }
        Ok(tonic::Response::new(StreamMetricsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::io::prometheus::client::{
        Metric, MetricFamily, Quantile, Summary as PSummary,
    };

    fn family(name: &str, count: u64, p50: f64, p99: f64, at: i64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Summary as i32),
            metric: vec![Metric {
                summary: Some(PSummary {
                    sample_count: Some(count),
                    quantile: [(0.5, p50), (0.99, p99)]
                        .into_iter()
                        .map(|(q, v)| Quantile {
                            quantile: Some(q),
                            value: Some(v),
                        })
                        .collect(),
                    ..Default::default()
                }),
                timestamp_ms: Some(at),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn keeps_upstream_request_times_by_cluster_and_sums_them() {
        let stats = EnvoyStats::default();
        let msg = StreamMetricsMessage {
            identifier: None,
            envoy_metrics: vec![
                family("cluster.checkout-2.upstream_rq_time", 10, 20.0, 30.0, 1_000),
                family(
                    "cluster.checkout-2.upstream_cx_length_ms",
                    5,
                    1.0,
                    1.0,
                    1_000,
                ),
                family("http.ingress.downstream_rq_time", 10, 1.0, 1.0, 1_000),
                // An idle interval says nothing.
                family(
                    "cluster.checkout-1.upstream_rq_time",
                    0,
                    f64::NAN,
                    f64::NAN,
                    1_000,
                ),
            ],
        };
        stats.take(&msg, "edge-1");
        let later = StreamMetricsMessage {
            identifier: None,
            envoy_metrics: vec![family(
                "cluster.checkout-2.upstream_rq_time",
                30,
                40.0,
                90.0,
                2_000,
            )],
        };
        stats.take(&later, "edge-1");
        let s = stats.summary("checkout-2", 0).unwrap();
        assert_eq!(s.requests, 40);
        assert_eq!(s.samples, 2);
        assert!((s.p50_ms - 35.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.p99_ms, 90.0);
        assert_eq!(stats.summary("checkout-2", 1_500).unwrap().requests, 30);
        assert!(stats.summary("checkout-1", 0).is_none());
        let later: Vec<u64> = stats
            .samples("checkout-2", 1_500)
            .iter()
            .map(|s| s.requests)
            .collect();
        assert_eq!(later, [30]);
    }
}
